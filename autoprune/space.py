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
  [keep_min, keep_max]). Every trial is feasible and sits at the budget, so the sampler
  learns only *where* to spend the FLOPs, never *how many*: no trial is wasted on a policy far
  under the budget or rejected over it. Width 0 everywhere is uniform pruning at the budget.
- ``free``: per group an absolute keep level on the ``keep_min..keep_max`` grid. Trials spread
  over FLOPs (a wider Pareto front); over-budget samples are rejected from predicted FLOPs.
- ``local``: ``fill`` around an *anchor* policy instead of uniform: per group a relative width
  ``anchor[g] * 2 ** (w / 4)`` with ``w`` in ``[-LOCAL_RANGE, LOCAL_RANGE]`` (half to twice the
  anchor's keep), scaled to spend the budget like ``fill``. The anchor is the policy derived
  from the per-group sensitivity analysis, so the sampler refines a good allocation instead
  of looking for one among all of them (where, on ResNet-20, most random allocations recover
  worse than uniform). Width 0 everywhere is the anchor itself at the budget.
- ``blend``: one parameter, the line from uniform pruning to the anchor: per group a relative
  width ``anchor[g] ** t`` with ``t = b / BLEND_STEPS_PER_UNIT`` for an integer ``b`` in
  ``0..BLEND_MAX`` (t = 0 is uniform, t = 1 the anchor, t > 1 goes past it), scaled to spend
  the budget; every group uses the analysis' importance method. Its few points are all
  enqueued, coarse to fine, as the study's first trials (see ``blend_order``). On ResNet-20 the
  recovered accuracy peaks between the two ends, which neither per-group space finds in
  15 trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import optuna

from autoprune.budget import blend_widths
from autoprune.groups import Group
from autoprune.policy import GroupChoice, Policy

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

#: blend points b in 0..BLEND_MAX, t = b / BLEND_STEPS_PER_UNIT: from uniform (0) to 1.25 x the way to the anchor
BLEND_MAX = 10
BLEND_STEPS_PER_UNIT = 8
BLEND_PARAM = "blend"


def blend_order() -> list[int]:
    """The blend points in the order a study tries them: the anchor, uniform, then halving the
    gaps (coarse to fine), so that a search stopped early has covered the line evenly."""
    order = [BLEND_STEPS_PER_UNIT, 0]
    step = BLEND_STEPS_PER_UNIT
    while len(order) <= BLEND_MAX and step > 1:
        step //= 2
        order += [b for b in range(step, BLEND_MAX + 1, step) if b not in order]
    return order + [b for b in range(BLEND_MAX + 1) if b not in order]


def width(w: int) -> float:
    return 2.0 ** (w / WIDTH_STEPS_PER_OCTAVE)


def local_width(w: int) -> float:
    return 2.0 ** (w / LOCAL_STEPS_PER_OCTAVE)


@dataclass(frozen=True)
class Space:
    levels: tuple[float, ...]  # keep ratios, evenly spaced ("free"); [levels[0], levels[-1]] bounds keep ("fill")
    methods: tuple[str, ...]
    distill: str = "off"  # "off" | "on" | "search"
    shape: str = "free"  # "fill" | "front" | "free" | "local" | "blend"
    #: ``front``: the lowest fraction of the budget a trial may spend
    floor: float = 0.25
    #: ``local`` and ``blend``: the keep ratio per group that width 0 (local) or t = 1 (blend)
    #: stands for (the sensitivity policy)
    anchor: Mapping[str, float] | None = None

    @property
    def relative(self) -> bool:
        """Whether trials sample relative widths that the budget solver scales (fill, front, local, blend)."""
        return self.shape in ("fill", "front", "local", "blend")

    def spend(self, s: int) -> float:
        """The ``front`` space's fraction of the budget at spend level ``s`` (log-spaced, floor to 1)."""
        return self.floor ** (1 - s / SPEND_STEPS)

    def bounds(self) -> tuple[int, int]:
        """The integer range of a relative width parameter."""
        r = LOCAL_RANGE if self.shape == "local" else WIDTH_RANGE
        return -r, r

    def relative_width(self, gid: str, w: int) -> float:
        if self.shape in ("local", "blend"):
            if not self.anchor or gid not in self.anchor:
                raise ValueError(f"a {self.shape!r} space needs an anchor keep for group {gid}")
            if self.shape == "blend":
                return blend_widths({gid: self.anchor[gid]}, w / BLEND_STEPS_PER_UNIT)[gid]
            return self.anchor[gid] * local_width(w)
        return width(w)

    def suggest(self, trial: optuna.Trial, groups: Sequence[Group], fit: Fit | None = None) -> Policy:
        """Sample a policy. ``fill`` needs ``fit``: relative widths -> policy at the budget."""
        methods = {g.id: self._method(trial, g) for g in groups}
        if self.distill == "search":
            distill = trial.suggest_categorical("distill", [False, True])
        else:
            distill = self.distill == "on"
        if self.relative:
            if fit is None:
                raise ValueError(f"a {self.shape!r} space needs the budget solver (fit)")
            if self.shape == "blend":
                b = trial.suggest_int(BLEND_PARAM, 0, BLEND_MAX)
                widths = {g.id: self.relative_width(g.id, b) for g in groups}
            else:
                lo, hi = self.bounds()
                widths = {g.id: self.relative_width(g.id, trial.suggest_int(f"{g.id}:width", lo, hi)) for g in groups}
            fraction = self.spend(trial.suggest_int(SPEND_PARAM, 0, SPEND_STEPS)) if self.shape == "front" else 1.0
            policy = fit(widths, methods, fraction)
            return Policy(groups=policy.groups, distill=distill)
        lo, hi = self.levels[0], self.levels[-1]
        step = (self.levels[1] - self.levels[0]) if len(self.levels) > 1 else None
        choices = {}
        for g in groups:
            keep = lo if step is None else trial.suggest_float(f"{g.id}:keep", lo, hi, step=step)
            choices[g.id] = GroupChoice(method=methods[g.id], keep=round(keep, 6))
        return Policy(groups=choices, distill=distill)

    def _method(self, trial: optuna.Trial, group: Group) -> str:
        if len(self.methods) > 1 and self.shape != "blend":
            return trial.suggest_categorical(f"{group.id}:method", list(self.methods))
        return self.methods[0]

    def params_for(self, policy: Policy, widths: Mapping[str, int] | None = None) -> dict[str, object]:
        """Optuna parameters that make ``suggest`` return ``policy`` (for enqueue_trial). A
        ``fill`` or ``local`` space takes the integer widths (``widths_of`` approximates them
        from keeps)."""
        params: dict[str, object] = {}
        if self.shape == "blend":
            raise ValueError("a 'blend' space has one parameter: enqueue {'blend': b}, see blend_order()")
        for gid, choice in policy.groups.items():
            if len(self.methods) > 1:
                params[f"{gid}:method"] = choice.method
            if self.relative:
                params[f"{gid}:width"] = int((widths or {}).get(gid, 0))
                if self.shape == "front":
                    params[SPEND_PARAM] = SPEND_STEPS  # at the budget
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
