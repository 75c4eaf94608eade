"""The search space: what a trial samples (per group: method and width; globally:
distillation), and policies to enqueue as warm starts. The only pruning module that knows Optuna.

Two shapes of space (``SearchConfig.space``):

- ``fill`` (default): per group a *relative width* ``2 ** (w / 2)`` with ``w`` an integer in
  ``[-WIDTH_RANGE, WIDTH_RANGE]``; one scale factor shared by all groups is then solved, from
  predicted FLOPs, so that the policy spends the budget (keep = scale x width, clipped to
  [keep_min, keep_max]). Every trial is feasible and sits at the budget, so the sampler
  learns only *where* to spend the FLOPs, never *how many*: no trial is wasted on a policy far
  under the budget or rejected over it. Width 0 everywhere is uniform pruning at the budget.
- ``free``: per group an absolute keep level on the ``keep_min..keep_max`` grid. Trials spread
  over FLOPs (a wider Pareto front); over-budget samples are rejected from predicted FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import optuna

from autoprune.groups import Group
from autoprune.policy import GroupChoice, Policy

#: relative widths 2 ** (w / 2) for w in -4..4: from a quarter to four times the uniform width
WIDTH_RANGE = 4

#: (relative width per group, method or methods per group) -> the policy that spends the budget
Fit = Callable[[Mapping[str, float], str | Mapping[str, str]], Policy]


def width(w: int) -> float:
    return 2.0 ** (w / 2)


@dataclass(frozen=True)
class Space:
    levels: tuple[float, ...]  # keep ratios, evenly spaced ("free"); [levels[0], levels[-1]] bounds keep ("fill")
    methods: tuple[str, ...]
    distill: str = "off"  # "off" | "on" | "search"
    shape: str = "free"  # "fill" | "free"

    def suggest(self, trial: optuna.Trial, groups: Sequence[Group], fit: Fit | None = None) -> Policy:
        """Sample a policy. ``fill`` needs ``fit``: relative widths -> policy at the budget."""
        methods = {g.id: self._method(trial, g) for g in groups}
        if self.distill == "search":
            distill = trial.suggest_categorical("distill", [False, True])
        else:
            distill = self.distill == "on"
        if self.shape == "fill":
            if fit is None:
                raise ValueError("a 'fill' space needs the budget solver (fit)")
            widths = {g.id: width(trial.suggest_int(f"{g.id}:width", -WIDTH_RANGE, WIDTH_RANGE)) for g in groups}
            policy = fit(widths, methods)
            return Policy(groups=policy.groups, distill=distill)
        lo, hi = self.levels[0], self.levels[-1]
        step = (self.levels[1] - self.levels[0]) if len(self.levels) > 1 else None
        choices = {}
        for g in groups:
            keep = lo if step is None else trial.suggest_float(f"{g.id}:keep", lo, hi, step=step)
            choices[g.id] = GroupChoice(method=methods[g.id], keep=round(keep, 6))
        return Policy(groups=choices, distill=distill)

    def _method(self, trial: optuna.Trial, group: Group) -> str:
        if len(self.methods) > 1:
            return trial.suggest_categorical(f"{group.id}:method", list(self.methods))
        return self.methods[0]

    def params_for(self, policy: Policy, widths: Mapping[str, int] | None = None) -> dict[str, object]:
        """Optuna parameters that make ``suggest`` return ``policy`` (for enqueue_trial). A
        ``fill`` space takes the integer widths (``widths_of`` approximates them from keeps)."""
        params: dict[str, object] = {}
        for gid, choice in policy.groups.items():
            if len(self.methods) > 1:
                params[f"{gid}:method"] = choice.method
            if self.shape == "fill":
                params[f"{gid}:width"] = int((widths or {}).get(gid, 0))
            elif len(self.levels) > 1:
                params[f"{gid}:keep"] = choice.keep
        if self.distill == "search":
            params["distill"] = policy.distill
        return params

    def uniform(self, groups: Sequence[Group], keep: float, method: str) -> Policy:
        return Policy(
            groups={g.id: GroupChoice(method=method, keep=keep) for g in groups},
            distill=self.distill == "on",
        )


def widths_of(policy: Policy) -> dict[str, int]:
    """The ``fill`` widths nearest to a policy's keep ratios relative to their geometric mean
    (to enqueue, e.g., a sensitivity-derived policy in a ``fill`` space)."""
    keeps = {gid: max(c.keep, 1e-6) for gid, c in policy.groups.items()}
    if not keeps:
        return {}
    mean = math.exp(sum(math.log(k) for k in keeps.values()) / len(keeps))
    return {gid: max(-WIDTH_RANGE, min(WIDTH_RANGE, round(2 * math.log2(k / mean)))) for gid, k in keeps.items()}


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
    ``scale`` whose predicted FLOPs stay within ``budget`` (bisection: FLOPs only grow with
    the scale). If even ``keep_min`` everywhere is over budget, that smallest policy is
    returned and the caller's exact check rejects it."""

    def policy(scale: float) -> Policy:
        return Policy({
            gid: GroupChoice(
                method=methods if isinstance(methods, str) else methods[gid],
                keep=round(min(keep_max, max(keep_min, scale * w)), 6),
            )
            for gid, w in widths.items()
        })

    lo, hi = 0.0, keep_max / min(widths.values())
    if predict(policy(hi)) <= budget:
        return policy(hi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predict(policy(mid)) <= budget else (lo, mid)
    return policy(lo)
