"""The search space: what a trial samples (per group: method and keep ratio; globally:
distillation), and policies to enqueue as warm starts. The only pruning module that knows Optuna."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from autoprune.groups import Group
from autoprune.policy import GroupChoice, Policy


@dataclass(frozen=True)
class Space:
    levels: tuple[float, ...]  # keep ratios, evenly spaced
    methods: tuple[str, ...]
    distill: str = "off"  # "off" | "on" | "search"

    def suggest(self, trial: optuna.Trial, groups: Sequence[Group]) -> Policy:
        lo, hi = self.levels[0], self.levels[-1]
        step = (self.levels[1] - self.levels[0]) if len(self.levels) > 1 else None
        choices = {}
        for g in groups:
            if len(self.methods) > 1:
                method = trial.suggest_categorical(f"{g.id}:method", list(self.methods))
            else:
                method = self.methods[0]
            if step is None:
                keep = lo
            else:
                keep = trial.suggest_float(f"{g.id}:keep", lo, hi, step=step)
            choices[g.id] = GroupChoice(method=method, keep=round(keep, 6))
        if self.distill == "search":
            distill = trial.suggest_categorical("distill", [False, True])
        else:
            distill = self.distill == "on"
        return Policy(groups=choices, distill=distill)

    def params_for(self, policy: Policy) -> dict[str, object]:
        """Optuna parameters that make ``suggest`` return ``policy`` (for enqueue_trial)."""
        params: dict[str, object] = {}
        for gid, choice in policy.groups.items():
            if len(self.methods) > 1:
                params[f"{gid}:method"] = choice.method
            if len(self.levels) > 1:
                params[f"{gid}:keep"] = choice.keep
        if self.distill == "search":
            params["distill"] = policy.distill
        return params

    def uniform(self, groups: Sequence[Group], keep: float, method: str) -> Policy:
        return Policy(
            groups={g.id: GroupChoice(method=method, keep=keep) for g in groups},
            distill=self.distill == "on",
        )
