"""One trial: sample a policy, prune a copy of the dense model, reject it at once if over
budget, else (optionally) refit its layers to the dense outputs, recalibrate BatchNorm,
fine-tune briefly, score on search-val, and measure."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from autoprune.core.batches import Split
from autoprune.core.budget import Budget, fill_budget
from autoprune.core.compute import Ledger, dense_epoch_flops
from autoprune.core.device import Runtime
from autoprune.core.loops import evaluate, finetune, model_device, recalibrate_bn
from autoprune.core.measure.flops import count_flops, count_nonzeros, count_params
from autoprune.core.measure.latency import LatencyMeter
from autoprune.core.policy import Policy
from autoprune.core.prune import Pruner
from autoprune.core.reconstruct import DenseTargets, dense_targets, reconstruct
from autoprune.policy_search.dashboard import mark_constraints, upload_policy
from autoprune.policy_search.space import Space
from autoprune.policy_search.study import TrialFailed
from autoprune.store.storage import StorageUnavailable

#: A policy whose predicted FLOPs exceed the budget by more than this fraction is rejected
#: without pruning (the predictor errs high, by under 0.1% on the models tested).
PREDICTION_MARGIN = 0.01
#: At the early-stop check, earlier trials with up to this fraction more FLOPs are rivals too.
EARLY_STOP_FLOPS_TOLERANCE = 0.02


@dataclass(frozen=True)
class TrialSettings:
    finetune_steps: int = 150
    finetune_lr: float = 0.01
    batch_size: int = 128
    bn_batches: int = 20
    seed: int = 0
    early_stop: float = 0.0  # check after this fraction of the fine-tune steps (0 = never)
    early_stop_margin: float = 0.02  # stop if an earlier trial with <= FLOPs was this much better
    early_stop_images: int = 1000  # search-val images scored at the check
    early_stop_min_trials: int = 5  # checked trials needed before anything is stopped
    before_images: int = 1000  # search-val images for accuracy_before_finetune (BN recalibrated, no fine-tune)
    prune_steps: int = 1  # > 1: reach the policy in this many rounds of pruning and fine-tuning


class Objective:
    """Callable for ``study.optimize``. Holds the dense model, data and cached pruning state."""

    def __init__(
        self,
        *,
        pruner: Pruner,
        space: Space,
        budget: Budget,
        train: Split,
        val: Split,
        settings: TrialSettings,
        params_objective: bool = False,
        reconstruct_x: torch.Tensor | None = None,
        runtime: Runtime | None = None,
        bn_data: Split | None = None,
        artifacts: Any | None = None,
        latency: LatencyMeter | None = None,
    ) -> None:
        self.pruner = pruner
        self.space = space
        self.budget = budget
        self.train = train
        self.val = val
        #: BatchNorm recalibration images: the train split without augmentation, if it has any
        self.bn_data = bn_data if bn_data is not None else train
        self.settings = settings
        self.params_objective = params_objective
        #: with images: each pruned model is first refit to the dense outputs on them (reconstruct.py)
        self.reconstruct_x = reconstruct_x
        #: trials prune on the CPU (where the dense model stays), then train and score here
        self.runtime = runtime if runtime is not None else Runtime()
        #: an Optuna artifact store: each completed trial's policy.json goes there (see dashboard.py)
        self.artifacts = artifacts
        #: with a latency budget: measures each architecture against the dense model (latency.py)
        self.latency = latency
        self._targets: DenseTargets | None = None
        self._teacher: nn.Module | None = None
        self._flops: dict[tuple[int, ...], int] = {}
        self._val_head = {n: val.head(n) for n in {settings.before_images, settings.early_stop_images}}
        #: compute is charged in FLOPs of the networks that ran (core/compute.py), per trial
        self.dense_flops = count_flops(pruner.dense, pruner.example_input)
        self.epoch_flops = dense_epoch_flops(self.dense_flops, len(train))
        self._ledger = Ledger()

    def _progressive(self, trial: optuna.Trial, policy: Policy, flops: int, seconds: dict[str, float],
                     t0: float) -> tuple[float, ...]:
        """A trial that reaches its policy in ``prune_steps`` rounds of pruning and fine-tuning
        (the same total steps; no early stop, no refit), re-ranking channels after each."""
        from autoprune.core.progressive import progressive

        s, rt = self.settings, self.runtime
        seed = s.seed + trial.number

        def train(model: nn.Module, n: int, label: str) -> None:
            self._ledger.watch(model, count_flops(model, self.pruner.example_input.to(model_device(model))))
            recalibrate_bn(model, self.bn_data, num_batches=s.bn_batches, batch_size=s.batch_size, seed=seed,
                           workers=rt.workers)
            finetune(model, self.train, steps=n, batch_size=s.batch_size, lr=s.finetune_lr, seed=seed,
                     teacher=self.teacher() if policy.distill else None, amp=rt.amp, workers=rt.workers)

        t = time.perf_counter()
        model, resolved = progressive(self.pruner, policy, s.prune_steps, s.finetune_steps, train, "trial", rt.device)
        seconds["finetune"] = time.perf_counter() - t
        record = resolved.to_dict()
        record["meta"] = self.pruner.settings()
        trial.set_user_attr("policy", record)
        t = time.perf_counter()
        acc = evaluate(model, self.val, amp=rt.amp, workers=rt.workers)
        seconds["evaluate"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t0
        trial.set_user_attr("feasible", True)
        trial.set_user_attr("nonzeros", count_nonzeros(model))
        trial.set_user_attr("accuracy", acc)
        trial.set_user_attr("prune_steps", s.prune_steps)
        trial.set_user_attr("seconds", {k: round(v, 4) for k, v in seconds.items()})
        if self.artifacts is not None:
            upload_policy(trial, record, self.artifacts)
        values = (acc, float(flops))
        return values + (float(trial.user_attrs["params"]),) if self.params_objective else values

    def teacher(self) -> nn.Module:
        """The dense model on the runtime's device (a copy there, made once, unless that is the CPU)."""
        if self._teacher is None:
            dense = self.pruner.dense
            self._teacher = dense if self.runtime.device.type == "cpu" else copy.deepcopy(dense).to(self.runtime.device)
        self._ledger.watch(self._teacher, self.dense_flops, dense=True)  # distillation's passes count
        return self._teacher

    def fit(self, widths: dict[str, float], methods: str | dict[str, str], fraction: float = 1.0) -> Policy:
        """The relative spaces' solver: relative widths -> the policy that spends ``fraction``
        of the budget (``front`` samples it; the others spend it all)."""
        return fill_budget(widths, methods, predict=self.pruner.predict_flops, budget=self.budget.flops * fraction,
                           keep_min=self.space.levels[0], keep_max=self.space.levels[-1])

    def flops_of(self, model: nn.Module, policy: Policy) -> int:
        """fvcore FLOPs, cached per architecture (the kept channel counts)."""
        key = tuple(policy.channels().values())
        if key not in self._flops:
            self._flops[key] = count_flops(model, self.pruner.example_input)
        return self._flops[key]

    def _check(
        self, trial: optuna.Trial, model: nn.Module, flops: int, state: dict[str, object]
    ) -> tuple[int, Callable[[], bool]] | None:
        """Early stopping of a hopeless trial, built by hand because Optuna's report /
        should_prune do not work in multi-objective studies. After ``early_stop`` of the
        fine-tune steps, the trial is scored on a few search-val images; it stops if an
        earlier trial with no more FLOPs scored ``early_stop_margin`` higher at the same
        point (dominated at the check, by a margin; FLOPs within 2% count as no more)."""
        s = self.settings
        if s.early_stop <= 0 or s.finetune_steps < 2:
            return None
        step = max(1, int(s.finetune_steps * s.early_stop))
        head = self._val_head[s.early_stop_images]

        def keep_going() -> bool:
            acc = evaluate(model, head, amp=self.runtime.amp, workers=self.runtime.workers)
            state["accuracy"] = acc
            checked = [
                t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "accuracy_at_check" in t.user_attrs
            ]
            if len(checked) < s.early_stop_min_trials:
                return True
            # FLOPs within EARLY_STOP_FLOPS_TOLERANCE count as equal: in a 'fill' space every
            # trial sits just under the budget, a few hundred FLOPs apart
            rivals = [t for t in checked if t.values[1] <= flops * (1 + EARLY_STOP_FLOPS_TOLERANCE)]
            if not rivals:
                return True
            best = max(rivals, key=lambda t: t.user_attrs["accuracy_at_check"])
            if best.user_attrs["accuracy_at_check"] >= acc + s.early_stop_margin:
                state["reason"] = (
                    f"early-stopped after {step}/{s.finetune_steps} steps: accuracy {acc:.4f} vs "
                    f"{best.user_attrs['accuracy_at_check']:.4f} of trial {best.number} "
                    f"({int(best.values[1]):,} <= {flops:,} FLOPs)"
                )
                return False
            return True

        return step, keep_going

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        """One trial. A failure of the pruned network (or of anything else in the trial) is
        stored as the trial's ``reason`` and raised as :class:`TrialFailed`, which the
        optimisation loop records as a failed trial and goes on. Every pass through the dense
        model (importance scoring, distillation) and the pruned one is charged to the trial's
        ``compute`` (also for trials rejected or stopped early)."""
        ledger = self._ledger = Ledger()
        ledger.watch(self.pruner.dense, self.dense_flops, dense=True)
        try:
            values = self._attempt(trial)
        except (optuna.TrialPruned, TrialFailed):
            trial.set_user_attr("compute", ledger.record(self.epoch_flops))
            raise
        finally:
            ledger.close()
        trial.set_user_attr("compute", ledger.record(self.epoch_flops))
        return values

    def _attempt(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            return self._run(trial)
        except (optuna.TrialPruned, KeyboardInterrupt, TrialFailed, StorageUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - recorded with the trial; three in a row end the search
            lines = str(exc).strip().splitlines()
            reason = f"failed: {type(exc).__name__}: {lines[0][:300] if lines else ''}"
            trial.set_user_attr("reason", reason)
            raise TrialFailed(reason) from exc

    def _run(self, trial: optuna.Trial) -> tuple[float, ...]:
        s = self.settings
        rt = self.runtime
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        policy = self.space.suggest(trial, self.pruner.groups, self.fit)
        predicted = self.pruner.predict_flops(policy)
        if predicted > self.budget.flops * (1 + PREDICTION_MARGIN):
            # Clearly over budget: rejected from channel counts alone, nothing is pruned.
            reason = f"infeasible: predicted flops {predicted:,.0f} > budget {self.budget.flops:,}"
            trial.set_constraint("flops", predicted / self.budget.flops - 1)
            mark_constraints(trial, {"flops": predicted / self.budget.flops - 1})
            trial.set_user_attr("flops_predicted", int(predicted))
            trial.set_user_attr("feasible", False)
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason)
        model, resolved = self.pruner.apply(policy)
        seconds["prune"] = time.perf_counter() - t0

        t = time.perf_counter()
        flops = self.flops_of(model, resolved)
        params = count_params(model)
        seconds["measure"] = time.perf_counter() - t
        self._ledger.watch(model, flops)  # from here on, every pass of the pruned network is charged
        # the kept indices and the pruner's settings too, so that autoprune.apply_policy (or apply, on
        # any machine) rebuilds exactly this network without calibration data
        record = resolved.to_dict()
        record["meta"] = self.pruner.settings()
        trial.set_user_attr("policy", record)
        trial.set_user_attr("channels", resolved.channels())
        trial.set_user_attr("flops", flops)
        trial.set_user_attr("params", params)
        violations = self.budget.violations(flops, params)
        over = [f"{k} {flops if k == 'flops' else params:,} > budget {getattr(self.budget, k):,}"
                for k, v in violations.items() if v > 0]
        if self.latency is not None and self.budget.latency is not None:
            t = time.perf_counter()
            measured = self.latency.measure(model, resolved.channels())  # cached per architecture
            seconds["latency"] = time.perf_counter() - t
            trial.set_user_attr("latency", measured)
            violations["latency"] = self.budget.latency.violation(measured)
            if violations["latency"] > 0:
                over.append(self.budget.latency.describe(measured))
        for name, value in violations.items():
            trial.set_constraint(name, value)
        mark_constraints(trial, violations)  # what optuna-dashboard 0.21 reads
        if over:
            reason = "infeasible: " + ", ".join(over)
            trial.set_user_attr("feasible", False)
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("seconds", {k: round(v, 4) for k, v in seconds.items()})
            raise optuna.TrialPruned(reason)

        if s.prune_steps > 1 and s.finetune_steps > 0:
            return self._progressive(trial, policy, flops, seconds, t0)
        if self.reconstruct_x is not None:
            t = time.perf_counter()
            if self._targets is None:  # the dense outputs are the same for every trial
                self._targets = dense_targets(self.pruner.dense, self.reconstruct_x, seed=s.seed)
            reconstruct(model, self._targets, self.pruner.kept_outputs(resolved))
            seconds["reconstruct"] = time.perf_counter() - t
        t = time.perf_counter()
        model.to(rt.device)
        recalibrate_bn(model, self.bn_data, num_batches=s.bn_batches, batch_size=s.batch_size, seed=s.seed + trial.number,
                       workers=rt.workers)
        seconds["calibrate"] = time.perf_counter() - t
        seconds["evaluate"] = 0.0
        acc_before = None
        if s.finetune_steps > 0:
            t = time.perf_counter()
            # a diagnostic nothing selects on: the first images of search-val are enough for it
            acc_before = evaluate(model, self._val_head[s.before_images], amp=rt.amp, workers=rt.workers)
            seconds["evaluate"] = time.perf_counter() - t

        t = time.perf_counter()
        check_state: dict[str, object] = {}
        if s.finetune_steps > 0:
            finetune(
                model, self.train, steps=s.finetune_steps, batch_size=s.batch_size, lr=s.finetune_lr,
                seed=s.seed + trial.number, teacher=self.teacher() if resolved.distill else None,
                check=self._check(trial, model, flops, check_state), amp=rt.amp, workers=rt.workers,
            )
        seconds["finetune"] = time.perf_counter() - t if s.finetune_steps > 0 else 0.0
        if "accuracy" in check_state:
            trial.set_user_attr("accuracy_at_check", check_state["accuracy"])
        if "reason" in check_state:
            seconds["total"] = time.perf_counter() - t0
            trial.set_user_attr("feasible", True)
            trial.set_user_attr("early_stopped", True)
            trial.set_user_attr("reason", check_state["reason"])
            trial.set_user_attr("accuracy_before_finetune", acc_before)
            trial.set_user_attr("seconds", {k: round(v, 4) for k, v in seconds.items()})
            raise optuna.TrialPruned(str(check_state["reason"]))
        t = time.perf_counter()
        acc = evaluate(model, self.val, amp=rt.amp, workers=rt.workers)
        seconds["evaluate"] += time.perf_counter() - t
        if acc_before is None:  # no fine-tune: the score is the accuracy before it
            acc_before = acc
        t = time.perf_counter()
        nonzeros = count_nonzeros(model)
        seconds["measure"] += time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t0

        trial.set_user_attr("feasible", True)
        trial.set_user_attr("nonzeros", nonzeros)
        trial.set_user_attr("accuracy_before_finetune", acc_before)
        trial.set_user_attr("accuracy", acc)
        trial.set_user_attr("seconds", {k: round(v, 4) for k, v in seconds.items()})
        if self.artifacts is not None:
            upload_policy(trial, record, self.artifacts)
        values = (acc, float(flops))
        return values + (float(params),) if self.params_objective else values
