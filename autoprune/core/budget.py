"""Policies that spend a FLOPs budget, solved by bisection on one scale shared by every group.

``fill_budget`` is what the relative search spaces (front, fill, local) call at every trial;
``uniform_at_budget`` is uniform pruning at a budget (the baseline every search is compared
with); ``global_magnitude`` is Torch-Pruning's global ranking at a budget (the other baseline)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from autoprune.core.measure.flops import count_flops
from autoprune.core.policy import GroupChoice, Policy

if TYPE_CHECKING:
    from autoprune.core.measure.latency import LatencyBudget, LatencyMeter
    from autoprune.core.prune import Pruner


@dataclass(frozen=True)
class Budget:
    flops: int
    params: int | None = None
    latency: LatencyBudget | None = None  # measured per trial (latency.py), on top of the FLOPs budget

    def violations(self, flops: int, params: int) -> dict[str, float]:
        """Constraint values for Optuna (<= 0 is feasible): relative excess over the budget."""
        out = {"flops": flops / self.flops - 1}
        if self.params is not None:
            out["params"] = params / self.params - 1
        return out


def largest_fitting(fits: Callable[[float], bool], lo: float, hi: float, *, iterations: int = 40) -> float:
    """The largest x in [lo, hi] with ``fits(x)``, for a ``fits`` that holds below some point
    and fails above it (bisection; ``lo`` itself is returned if nothing larger fits)."""
    if fits(hi):
        return hi
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fill_budget(
    widths: Mapping[str, float],
    methods: str | Mapping[str, str],
    *,
    predict: Callable[[Policy], float],
    budget: float,
    keep_min: float,
    keep_max: float = 1.0,
    iterations: int = 40,
) -> Policy:
    """The policy ``keep[g] = clip(scale * widths[g], keep_min, keep_max)`` with the largest
    ``scale`` whose ``predict``-ed FLOPs stay within ``budget`` (FLOPs only grow with the
    scale). If even ``keep_min`` everywhere is over budget, that smallest policy is returned
    and the caller's exact check rejects it."""

    def policy(scale: float) -> Policy:
        return Policy({
            gid: GroupChoice(
                method=methods if isinstance(methods, str) else methods[gid],
                keep=round(min(keep_max, max(keep_min, scale * w)), 6),
            )
            for gid, w in widths.items()
        })

    scale = largest_fitting(lambda s: predict(policy(s)) <= budget, 0.0, keep_max / min(widths.values()),
                            iterations=iterations)
    return policy(scale)


def uniform_at_budget(pruner: Pruner, budget: float, method: str = "l1", *, keep_min: float = 1e-3,
                      exact: bool = True) -> Policy:
    """Uniform pruning at ``budget``: one keep ratio for every group, the largest whose FLOPs
    fit, counted by fvcore on the pruned network (``exact``) or predicted from channel counts."""
    def flops(policy: Policy) -> float:
        if not exact:
            return pruner.predict_flops(policy)
        return count_flops(pruner.apply(policy)[0], pruner.example_input)

    return fill_budget({g.id: 1.0 for g in pruner.groups}, method, predict=flops, budget=budget,
                       keep_min=keep_min, iterations=25)


def uniform_within_latency(pruner: Pruner, meter: LatencyMeter, budget: LatencyBudget, *, keep_min: float,
                           method: str = "l1", iterations: int = 7) -> tuple[Policy | None, dict[str, float]]:
    """Uniform pruning at the largest keep ratio whose measured latency meets ``budget``
    (bisection on the keep ratio; each architecture measured once, see latency.py), and its
    measurement; (None, the measurement at ``keep_min``) if even ``keep_min`` everywhere is
    over it. What ``--budget-latency`` without ``--budget-flops`` turns into a FLOPs budget."""
    measured: dict[float, dict[str, float]] = {}

    def policy(keep: float) -> Policy:
        return Policy({g.id: GroupChoice(method, round(keep, 6)) for g in pruner.groups})

    def fits(keep: float) -> bool:
        model, resolved = pruner.apply(policy(keep))
        measured[keep] = meter.measure(model, resolved.channels())
        return budget.violation(measured[keep]) <= 0

    if not fits(keep_min):
        return None, measured[keep_min]
    keep = largest_fitting(fits, keep_min, 1.0, iterations=iterations)
    return policy(keep), measured[keep]


def _global_pruned(dense: nn.Module, example: torch.Tensor, ignored: Sequence[str], target: int):
    """Torch-Pruning's global magnitude pruning at the ratio that fits ``target``: the pruned
    model and its pruning history ([root module name, out-channel pruning?, removed indices])."""
    import torch_pruning as tp

    def prune(ratio: float):
        model = copy.deepcopy(dense).cpu().eval()
        modules = dict(model.named_modules())
        pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=0.95,
                                      ignored_layers=[modules[n] for n in ignored])
        pruner.step()
        return model, pruner.pruning_history()

    kept = largest_fitting(lambda k: count_flops(prune(1 - k)[0], example) <= target, 0.05, 1.0, iterations=20)
    return prune(1 - kept)


def global_magnitude(dense: nn.Module, example: torch.Tensor, ignored: Sequence[str], target: int) -> nn.Module:
    """Torch-Pruning's global magnitude pruning (L2, one ranking across groups), its pruning
    ratio solved so that the model's fvcore FLOPs fit ``target``."""
    return _global_pruned(dense, example, ignored, target)[0]


def global_magnitude_policy(pruner: Pruner, target: int) -> Policy:
    """:func:`global_magnitude` as a policy: the channels Torch-Pruning's global ranking keeps in
    each group (read from its pruning history), so that ``pruner.apply`` (and ``apply``, from
    policy.json) rebuilds that network. Raises ValueError if Torch-Pruning pruned a group this
    pruner does not know (its groups are rooted elsewhere)."""
    _, history = _global_pruned(pruner.dense, pruner.example_input, pruner.ignored, target)
    by_id = {g.id: g for g in pruner.groups}
    removed: dict[str, set[int]] = {}
    for name, out_channels, idxs in history:
        if not out_channels or name not in by_id:
            raise ValueError(f"global magnitude pruned {name!r}, which is not a group root here")
        removed.setdefault(name, set()).update(int(i) for i in idxs)
    groups = {}
    for g in pruner.groups:
        kept = tuple(i for i in range(g.channels) if i not in removed.get(g.id, ()))
        groups[g.id] = GroupChoice("l2", round(len(kept) / g.channels, 6), g.channels, len(kept), kept)
    return Policy(groups, meta={"rule": "global magnitude (Torch-Pruning, L2)"})
