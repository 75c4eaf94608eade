"""The optimisation loop: Optuna's ``study.optimize`` with the counts, stopping rules, worker tags and
interrupt handling autoprune adds (the ``Study`` facade and reading results are in ``study.py``)."""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.policy_search import interrupts
from autoprune.policy_search.study import (
    TrialFailed,
    completed,
    is_feasible,
    requeue,
    trained_count,
    trials_compute,
)


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    trials: int,
    timeout: float | None,
    progress: bool = True,
    until: int | None = None,
    worker: dict[str, Any] | None = None,
    compute_limit: int | None = None,
) -> dict[str, Any]:
    """Run until ``trials`` trials have been fine-tuned, fully or until stopped early
    (over-budget policies are rejected before any training and do not count), or
    ``timeout`` seconds; with ``until``, until the study holds that many trained trials,
    whoever trained them (several workers). Each trial records ``worker`` (this process's
    index, threads, device) as a user attribute. A trial interrupted by Ctrl-C or SIGTERM
    is failed and queued again for the next worker, then the interrupt goes on. With
    ``compute_limit`` (FLOPs), it also stops once the study's trials have spent that much
    (``--compute``: core/compute.py), whatever their state. Returns counts."""
    counts: dict[str, Any] = {"complete": 0, "early_stopped": 0, "infeasible": 0, "failed": 0}
    reasons: dict[str, list[int]] = {}  # why trials failed -> their numbers
    counts["failures"] = reasons
    max_infeasible = 50 * trials + 200  # a budget the space can hardly reach: stop sampling at some point
    best = [max((t.values[0] for t in completed(study) if is_feasible(t)), default=-math.inf)]
    streak = [0]  # consecutive failed trials
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=None if compute_limit else trials, desc="trials", unit="trial", dynamic_ncols=True, file=sys.stderr)

    def spent_enough() -> bool:
        return compute_limit is not None and trials_compute(study) >= compute_limit

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if spent_enough():
            study.stop()
        if trial.state == TrialState.COMPLETE:
            counts["complete"] += 1
            if is_feasible(trial):
                best[0] = max(best[0], trial.values[0])
            if bar is not None:
                bar.update()
        elif trial.state == TrialState.PRUNED and trial.user_attrs.get("early_stopped"):
            counts["early_stopped"] += 1
            if bar is not None:
                bar.update()
        elif trial.state == TrialState.PRUNED:
            counts["infeasible"] += 1
        else:
            counts["failed"] += 1
            reason = trial.user_attrs.get("reason", "failed (no reason stored)")
            reasons.setdefault(reason, []).append(trial.number)
            if progress:
                print(f"\ntrial {trial.number} {reason}", file=sys.stderr)
            streak[0] += 1
            if streak[0] >= 3:
                print(f"\nstopping: {streak[0]} trials in a row failed (the reasons are stored with the trials)",
                      file=sys.stderr)
                study.stop()
            return
        streak[0] = 0
        if bar is not None:
            bar.set_postfix(best_acc=f"{best[0]:.4f}" if best[0] > -math.inf else "-",
                            stopped=counts["early_stopped"], rejected=counts["infeasible"])
        if until is not None:
            if trained_count(study) >= until:
                study.stop()
        elif counts["complete"] + counts["early_stopped"] >= trials:
            study.stop()
        elif counts["infeasible"] >= max_infeasible:
            print(f"\nstopping: {counts['infeasible']} sampled policies were over budget; "
                  "loosen the budget or lower keep_min", file=sys.stderr)
            study.stop()

    running: list[int] = []  # the storage id of the trial in flight

    def tagged(trial: optuna.Trial) -> Any:
        running[:] = [trial._trial_id]
        if worker is not None:
            trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), **worker})
        try:
            return objective(trial)
        except KeyboardInterrupt as exc:
            interrupts.acknowledge()
            trial.set_user_attr("reason", f"interrupted ({getattr(exc, 'signal_name', 'Ctrl-C')}); queued again")
            raise

    if (until is not None and trained_count(study) >= until) or spent_enough():
        return counts
    try:
        # A trial that fails (the objective stores why) is recorded as failed instead of ending
        # the search; three failures in a row end it.
        study.optimize(tagged, n_trials=None, timeout=timeout, callbacks=[callback], gc_after_trial=False,
                       catch=(TrialFailed,))
    except KeyboardInterrupt:
        interrupts.acknowledge()  # reached: the CLI need not send it again
        if running:
            requeue(study, running[0])
        raise
    finally:
        if bar is not None:
            bar.close()
    return counts
