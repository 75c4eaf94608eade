"""The search space: what a trial samples (per group: method and width; globally:
distillation), and policies to enqueue as warm starts. The only pruning module that knows Optuna.

The shapes of space (``SearchConfig.space``):

- ``front`` (default): ``fill``, plus one integer ``spend`` in ``0..SPEND_STEPS``: the trial
  spends ``floor ** (1 - spend / SPEND_STEPS)`` of the budget instead of all of it, so one
  search covers the curve from the budget down to ``floor`` of it; every trial is feasible.
  (Spending the whole budget in every other trial, as ``fill`` does, was tried and measured:
  its picks at the budget were no better on test, docs/benchmarks.md.)
- ``fill``: per group a *relative width* ``2 ** (w / 2)`` with ``w`` an integer in
  ``[-WIDTH_RANGE, WIDTH_RANGE]``; one scale factor shared by all groups is then solved, from
  predicted FLOPs, so that the policy spends the budget (keep = scale x width, clipped to
  [keep_min, 1]). Every trial is feasible and sits at the budget, so the sampler
  learns only *where* to spend the FLOPs, never *how many*: no trial is wasted on a policy far
  under the budget or rejected over it. Width 0 everywhere is uniform pruning at the budget.
- ``local``: ``fill`` around an *anchor* policy instead of uniform: per group a relative width
  ``anchor[g] * 2 ** (w / 4)`` with ``w`` in ``[-LOCAL_RANGE, LOCAL_RANGE]`` (half to twice the
  anchor's keep), scaled to spend the budget like ``fill``. The anchor is the policy derived
  from the per-group sensitivity analysis, so the sampler refines a good allocation instead
  of looking for one among all of them (where, on ResNet-20, most random allocations recover
  worse than uniform). Width 0 everywhere is the anchor itself at the budget.

The ``free`` (absolute keep levels) and ``blend`` (the line from uniform to the anchor) shapes were
removed on 2026-12-06: ``front`` superseded the first, and the second's proxy did not find its peak
(docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import optuna

from autoprune.core.groups import Group
from autoprune.core.policy import GroupChoice, Policy

#: relative widths 2 ** (w / 2) for w in -4..4: from a quarter to four times the uniform width
WIDTH_RANGE = 4
WIDTH_STEPS_PER_OCTAVE = 2

#: (relative width per group, method or methods per group, fraction of the budget to spend) -> the
#: policy that spends it
Fit = Callable[..., Policy]

#: the ``front`` space's spend levels: fraction floor ** (1 - s / SPEND_STEPS) of the budget, s in 0..SPEND_STEPS
SPEND_STEPS = 8
SPEND_PARAM = "spend"


#: relative widths 2 ** (w / 4) around the anchor for w in -4..4: from half to twice its keep
LOCAL_RANGE = 4
LOCAL_STEPS_PER_OCTAVE = 4

def width(w: int) -> float:
    return 2.0 ** (w / WIDTH_STEPS_PER_OCTAVE)


def local_width(w: int) -> float:
    return 2.0 ** (w / LOCAL_STEPS_PER_OCTAVE)


@dataclass(frozen=True)
class Space:
    levels: tuple[float, ...]  # keep ratios; [levels[0], levels[-1]] bounds every group's keep
    methods: tuple[str, ...]
    distill: str = "off"  # "off" | "on" | "search"
    shape: str = "front"  # "front" | "fill" | "local"
    #: ``front``: the lowest fraction of the budget a trial may spend
    floor: float = 0.25
    #: ``local``: the keep ratio per group that width 0 stands for (the sensitivity policy)
    anchor: Mapping[str, float] | None = None

    def spend(self, s: int) -> float:
        """The ``front`` space's fraction of the budget at spend level ``s`` (log-spaced, floor to 1)."""
        return self.floor ** (1 - s / SPEND_STEPS)

    def bounds(self) -> tuple[int, int]:
        """The integer range of a relative width parameter."""
        r = LOCAL_RANGE if self.shape == "local" else WIDTH_RANGE
        return -r, r

    def relative_width(self, gid: str, w: int) -> float:
        if self.shape == "local":
            if not self.anchor or gid not in self.anchor:
                raise ValueError(f"a 'local' space needs an anchor keep for group {gid}")
            return self.anchor[gid] * local_width(w)
        return width(w)

    def suggest(self, trial: optuna.Trial, groups: Sequence[Group], fit: Fit) -> Policy:
        """Sample a policy: relative widths (and a spend level in ``front``), which ``fit``
        scales into the policy that spends that share of the budget."""
        methods = {g.id: self._method(trial, g) for g in groups}
        if self.distill == "search":
            distill = trial.suggest_categorical("distill", [False, True])
        else:
            distill = self.distill == "on"
        lo, hi = self.bounds()
        widths = {g.id: self.relative_width(g.id, trial.suggest_int(f"{g.id}:width", lo, hi)) for g in groups}
        fraction = self.spend(trial.suggest_int(SPEND_PARAM, 0, SPEND_STEPS)) if self.shape == "front" else 1.0
        policy = fit(widths, methods, fraction)
        return Policy(groups=policy.groups, distill=distill)

    def _method(self, trial: optuna.Trial, group: Group) -> str:
        if len(self.methods) > 1:
            return trial.suggest_categorical(f"{group.id}:method", list(self.methods))
        return self.methods[0]

    def params_for(self, policy: Policy, widths: Mapping[str, int] | None = None) -> dict[str, object]:
        """Optuna parameters that make ``suggest`` return ``policy`` (for enqueue_trial). A
        ``fill`` or ``local`` space takes the integer widths (``widths_of`` approximates them
        from keeps)."""
        params: dict[str, object] = {}
        for gid, choice in policy.groups.items():
            if len(self.methods) > 1:
                params[f"{gid}:method"] = choice.method
            params[f"{gid}:width"] = int((widths or {}).get(gid, 0))
        if self.shape == "front":
            params[SPEND_PARAM] = SPEND_STEPS  # at the budget
        if self.distill == "search":
            params["distill"] = policy.distill
        return params

    def uniform(self, groups: Sequence[Group], keep: float, method: str) -> Policy:
        return Policy(
            groups={g.id: GroupChoice(method=method, keep=keep) for g in groups},
            distill=self.distill == "on",
        )


def widths_of(policy: Policy, anchor: Mapping[str, float] | None = None) -> dict[str, int]:
    """The integer widths nearest to a policy's keep ratios relative to their geometric mean:
    of a ``fill`` space, or with ``anchor`` of a ``local`` space around it (to enqueue, e.g.,
    a sensitivity-derived policy in a ``fill`` space, or uniform in a ``local`` one). The
    budget solver rescales them, so only the ratios between groups matter."""
    rel = {gid: max(c.keep, 1e-6) / (anchor[gid] if anchor else 1.0) for gid, c in policy.groups.items()}
    if not rel:
        return {}
    mean = math.exp(sum(math.log(k) for k in rel.values()) / len(rel))
    per_octave, r = (LOCAL_STEPS_PER_OCTAVE, LOCAL_RANGE) if anchor else (WIDTH_STEPS_PER_OCTAVE, WIDTH_RANGE)
    return {gid: max(-r, min(r, round(per_octave * math.log2(k / mean)))) for gid, k in rel.items()}
