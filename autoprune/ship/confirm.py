"""Confirm a search's best candidates at a higher fidelity before one is applied.

A trial's score is search-val accuracy after a short fine-tune (150 steps by default): cheap
enough for a search, but near the top of a study candidates lie closer together than it can
resolve. ``confirm`` re-runs the recovery ``apply`` would give (the dense model pruned by the
trial's policy, BatchNorm recalibrated, ``steps`` fine-tune steps, seeds ``seed .. seed+n-1``)
for the top candidates and scores them on the same search-val split; the test split is still
left to ``apply``. With the study's seed and ``apply``'s step count, the first run is exactly
the model ``apply`` would export.

Each result is stored as soon as it is measured, in the study's user attribute
``confirm:<trial number>`` (so a killed run resumes where it stopped, and workers that confirm
different trials never write the same key), and ``apply --best`` prefers the best confirmed
trial over the best search-val score."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autoprune.errors import UserError
from autoprune.policy_search import study as studies

PREFIX = "confirm:"


def candidates(study: optuna.Study, *, top: int | None = None, numbers: list[int] | None = None) -> list[FrozenTrial]:
    """The ``top`` feasible completed trials by search-val accuracy (ties: fewer FLOPs), or
    the trials ``numbers`` (which must be completed and feasible), best first."""
    feasible = studies.ranked_feasible(study)
    if numbers is not None:
        by_number = {t.number: t for t in feasible}
        bad = [n for n in numbers if n not in by_number]
        if bad:
            raise UserError(
                f"trial {bad[0]} is not a completed feasible trial of {study.study_name!r}; valid trials: "
                f"{', '.join(map(str, sorted(by_number))) or 'none'}")
        wanted = set(numbers)
        return [t for t in feasible if t.number in wanted]
    if top is not None and top < 1:
        raise UserError(f"--top {top} must be at least 1")
    return feasible[:top]


def runs(study: optuna.Study) -> dict[int, list[dict[str, Any]]]:
    """Stored confirmation runs per trial number: ``{"steps", "seed", "accuracy", "seconds"}``."""
    return {int(k[len(PREFIX):]): list(v.get("runs", [])) for k, v in study.user_attrs.items()
            if k.startswith(PREFIX) and k[len(PREFIX):].isdigit()}


def scores(study: optuna.Study, steps: int | None = None) -> tuple[int | None, dict[int, list[float]]]:
    """(steps, {trial: accuracies}) of the confirmation runs at ``steps``; by default the
    largest step count any trial was confirmed at, so that only like is compared with like."""
    stored = runs(study)
    if steps is None:
        steps = max((r["steps"] for rs in stored.values() for r in rs), default=None)
    out = {n: [r["accuracy"] for r in rs if r["steps"] == steps] for n, rs in stored.items()}
    return steps, {n: accs for n, accs in out.items() if accs}


def best_confirmed(study: optuna.Study) -> FrozenTrial | None:
    """The trial with the best mean confirmed accuracy (ties: fewer FLOPs), or None if no
    trial was confirmed."""
    _, accs = scores(study)
    done = {t.number: t for t in studies.completed(study) if studies.is_feasible(t)}
    ranked = [n for n in accs if n in done]
    if not ranked:
        return None
    return done[max(ranked, key=lambda n: (statistics.mean(accs[n]), -done[n].values[1], -n))]


def choose_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number`` (it must be completed), or with ``None`` the one to apply: the best
    confirmed trial if ``autoprune confirm`` ran, else the best search-val score."""
    if number is None:
        best = best_confirmed(study) or studies.best_feasible(study)
        if best is None:
            raise UserError(f"study {study.study_name!r} has no completed feasible trial yet")
        return best
    done = {t.number: t for t in studies.completed(study)}
    if number not in done:
        raise UserError(
            f"trial {number} is not a completed trial of {study.study_name!r}; completed trials: "
            f"{', '.join(map(str, sorted(done))) or 'none'}"
        )
    return done[number]


def confirm(
    study: optuna.Study,
    trials: list[FrozenTrial],
    *,
    steps: int,
    seeds: int,
    data_root: str | None = None,
    device: str | None = None,
    progress: bool = False,
    on_run: Callable[[FrozenTrial, dict[str, Any]], None] | None = None,
    checkpoint: str | None = None,
    artifact_dir: str | None = None,
) -> dict[int, list[float]]:
    """Recover each trial's policy ``seeds`` times for ``steps`` fine-tune steps and score it on
    search-val; runs already stored (same steps and seed) are not repeated. Returns the
    accuracies at ``steps`` per trial."""
    from autoprune.core.compute import Ledger
    from autoprune.core.device import torch_threads
    from autoprune.core.loops import evaluate
    from autoprune.core.policy import Policy
    from autoprune.ship.replay import dense_file, prepare, recover
    from autoprune.task.setup import runtime_of

    if steps < 1:
        raise UserError(f"--steps {steps} must be at least 1")
    if seeds < 1:
        raise UserError(f"--seeds {seeds} must be at least 1")
    info = studies.info(study)
    config, task, _, pruner = prepare(info, study_name=study.study_name, data_root=data_root, device=device,
                                      checkpoint=dense_file(info, checkpoint, artifact_dir, progress))
    rt = runtime_of(config, task)
    with torch_threads(config.threads):
        for trial in trials:
            key = f"{PREFIX}{trial.number}"
            stored = list(study.user_attrs.get(key, {}).get("runs", []))
            have = {(r["steps"], r["seed"]) for r in stored}
            policy = Policy.from_dict(trial.user_attrs["policy"], source=f"trial {trial.number} policy")
            for seed in range(config.seed, config.seed + seeds):
                if (steps, seed) in have:
                    continue
                t0 = time.perf_counter()
                ledger = Ledger()
                try:
                    model, _ = recover(pruner, policy, task, dataclasses.replace(config, seed=seed), steps=steps,
                                       progress=progress, desc=f"confirm trial {trial.number}, seed {seed}",
                                       runtime=rt, ledger=ledger)
                    accuracy = evaluate(model, task.val, amp=rt.amp, workers=rt.workers)
                finally:
                    ledger.close()
                run = {"steps": steps, "seed": seed, "accuracy": accuracy,
                       "seconds": round(time.perf_counter() - t0, 1), "compute_flops": ledger.total}
                stored.append(run)
                study.set_user_attr(key, {"runs": stored})
                if on_run is not None:
                    on_run(trial, run)
    return {t.number: [r["accuracy"] for r in runs(study).get(t.number, []) if r["steps"] == steps] for t in trials}


def format_table(study: optuna.Study, steps: int) -> str:
    """Every trial confirmed at ``steps``, best first, next to its search-time score."""
    _, accs = scores(study, steps)
    done = {t.number: t for t in studies.completed(study)}
    dense_flops = studies.info(study)["dense"]["flops"]
    rows = sorted(((n, a) for n, a in accs.items() if n in done), key=lambda r: -statistics.mean(r[1]))
    head = f"{'trial':>5}  {'search-val':>10}  {f'confirmed ({steps} steps)':>24}  {'seeds':>5}  {'of dense':>8}  note"
    lines = [head, "-" * len(head)]
    for n, a in rows:
        t = done[n]
        sd = f" ± {statistics.stdev(a):.4f}" if len(a) > 1 else ""
        lines.append(f"{n:>5}  {t.values[0]:>10.4f}  {f'{statistics.mean(a):.4f}{sd}':>24}  {len(a):>5}  "
                     f"{t.values[1] / dense_flops:>8.3f}  {t.user_attrs.get('warm_start', '')}")
    return "\n".join(lines)
