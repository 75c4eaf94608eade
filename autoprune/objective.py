"""One trial: sample a policy, prune a copy of the dense model, reject it at once if over
budget, else recalibrate BatchNorm, fine-tune briefly, score on search-val, and measure."""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
import torch
from torch import nn

from autoprune.measure import count_flops, count_nonzeros, count_params
from autoprune.policy import Policy
from autoprune.prune import Pruner
from autoprune.space import Space
from autoprune.train import evaluate, finetune, recalibrate_bn

METRIC_NAMES = ("accuracy", "flops", "params")


@dataclass(frozen=True)
class TrialSettings:
    finetune_steps: int = 150
    finetune_lr: float = 0.01
    batch_size: int = 128
    bn_batches: int = 20
    seed: int = 0


@dataclass(frozen=True)
class Budget:
    flops: int
    params: int | None = None

    def violations(self, flops: int, params: int) -> dict[str, float]:
        """Constraint values for Optuna (<= 0 is feasible): relative excess over the budget."""
        out = {"flops": flops / self.flops - 1}
        if self.params is not None:
            out["params"] = params / self.params - 1
        return out


class Objective:
    """Callable for ``study.optimize``. Holds the dense model, data and cached pruning state."""

    def __init__(
        self,
        *,
        pruner: Pruner,
        space: Space,
        budget: Budget,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        settings: TrialSettings,
        params_objective: bool = False,
    ) -> None:
        self.pruner = pruner
        self.space = space
        self.budget = budget
        self.train = train
        self.val = val
        self.settings = settings
        self.params_objective = params_objective
        self._flops: dict[tuple[int, ...], int] = {}

    def flops_of(self, model: nn.Module, policy: Policy) -> int:
        """fvcore FLOPs, cached per architecture (the kept channel counts)."""
        key = tuple(policy.channels().values())
        if key not in self._flops:
            self._flops[key] = count_flops(model, self.pruner.example_input)
        return self._flops[key]

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        s = self.settings
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        policy = self.space.suggest(trial, self.pruner.groups)
        model, resolved = self.pruner.apply(policy)
        seconds["prune"] = time.perf_counter() - t0

        t = time.perf_counter()
        flops = self.flops_of(model, resolved)
        params = count_params(model)
        seconds["measure"] = time.perf_counter() - t
        record = resolved.to_dict()
        for g in record["groups"].values():
            g.pop("kept_indices", None)
        trial.set_user_attr("policy", record)
        trial.set_user_attr("channels", resolved.channels())
        trial.set_user_attr("flops", flops)
        trial.set_user_attr("params", params)
        violations = self.budget.violations(flops, params)
        for name, value in violations.items():
            trial.set_constraint(name, value)
        over = {k: v for k, v in violations.items() if v > 0}
        if over:
            reason = "infeasible: " + ", ".join(
                f"{k} {flops if k == 'flops' else params:,} > budget {getattr(self.budget, k):,}" for k in over
            )
            trial.set_user_attr("feasible", False)
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("seconds", {k: round(v, 4) for k, v in seconds.items()})
            raise optuna.TrialPruned(reason)

        t = time.perf_counter()
        recalibrate_bn(model, self.train[0], num_batches=s.bn_batches, batch_size=s.batch_size, seed=s.seed + trial.number)
        seconds["calibrate"] = time.perf_counter() - t
        t = time.perf_counter()
        acc_before = evaluate(model, *self.val)
        seconds["evaluate"] = time.perf_counter() - t

        t = time.perf_counter()
        finetune(
            model, *self.train, steps=s.finetune_steps, batch_size=s.batch_size, lr=s.finetune_lr,
            seed=s.seed + trial.number, teacher=self.pruner.dense if resolved.distill else None,
        )
        seconds["finetune"] = time.perf_counter() - t
        t = time.perf_counter()
        acc = evaluate(model, *self.val)
        seconds["evaluate"] += time.perf_counter() - t
        t = time.perf_counter()
        nonzeros = count_nonzeros(model)
        seconds["measure"] += time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t0

        trial.set_user_attr("feasible", True)
        trial.set_user_attr("nonzeros", nonzeros)
        trial.set_user_attr("accuracy_before_finetune", acc_before)
        trial.set_user_attr("accuracy", acc)
        trial.set_user_attr("seconds", {k: round(v, 4) for k, v in seconds.items()})
        values = (acc, float(flops))
        return values + (float(params),) if self.params_objective else values
