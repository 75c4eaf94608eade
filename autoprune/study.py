"""The Optuna study: storage, creation or resumption, sampler, the optimisation loop and
reading results back. The config and dense-model facts live in the study's user attributes."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import UserError, unknown_choice
from autoprune.objective import METRIC_NAMES, TrialFailed

ATTR = "autoprune"
#: Config fields that define what a study compares; resuming with other values is refused.
IDENTITY = ("model", "dataset", "checkpoint", "val_size", "split_seed", "budget_flops", "budget_params",
            "params_objective", "space", "methods", "keep_min", "keep_max", "keep_step", "round_to",
            "min_channels", "ignore", "distill", "finetune_steps", "seed", "reconstruct", "prune_stem", "augment",
            "prune_steps", "front_floor")
#: what a study stored before a key existed means (so that older studies still resume)
IDENTITY_DEFAULTS: dict[str, Any] = {"reconstruct": False, "prune_stem": False, "augment": True, "prune_steps": 1,
                                     "front_floor": 0.25}


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage for any SQLAlchemy URL, with heartbeats so that a killed worker's trial
    is failed and retried by the next worker. A bad URL is a one-line :class:`UserError`."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=60,
                grace_period=180,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
    except Exception as exc:  # sqlalchemy.exc.ArgumentError, OperationalError, ModuleNotFoundError
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise UserError(
            f"cannot open storage {url!r}: {lines[0][:300]} "
            "(expected an SQLAlchemy URL such as sqlite:///studies/x.db or "
            "postgresql+psycopg2://user@host/db)"
        ) from None


def make_sampler(name: str, *, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise unknown_choice("sampler", name, ("tpe", "nsga2", "random", "gp"))


def create_or_resume(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    attrs: dict[str, Any],
    sampler: str,
    seed: int,
    params_objective: bool,
) -> tuple[optuna.Study, bool]:
    """The study ``name``, created with ``attrs`` stored, or resumed if its stored identity
    matches. Returns (study, resumed)."""
    existing = {s.study_name: s for s in storage.get_all_studies()}
    n_obj = 3 if params_objective else 2
    if name in existing:
        old = existing[name].user_attrs.get(ATTR)
        check_identity(name, old, attrs["config"])
        if old.get("input_shape") not in (None, attrs.get("input_shape")):
            raise UserError(
                f"study {name!r} was searched on inputs of shape {tuple(old['input_shape'])}, now "
                f"{tuple(attrs['input_shape'])} (--image-size?); resume it with the same, or use --study NEW_NAME"
            )
        if old.get("dense", {}).get("sha256") not in (None, attrs.get("dense", {}).get("sha256")):
            raise UserError(
                f"study {name!r} was searched on another dense checkpoint (sha256 "
                f"{old['dense']['sha256'][:12]}); use --study NEW_NAME for this one"
            )
        n_done = len(storage.get_all_trials(existing[name]._study_id, deepcopy=False))
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(sampler, seed=seed + n_done))
        return study, True
    directions = ["maximize", "minimize", "minimize"][:n_obj]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                sampler=make_sampler(sampler, seed=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(METRIC_NAMES[:n_obj]))
    study.set_user_attr(ATTR, attrs)
    return study, False


def check_identity(name: str, stored: dict[str, Any] | None, config: dict[str, Any]) -> None:
    """Refuse to resume study ``name`` (whose autoprune attrs are ``stored``) with ``config``
    when they differ in a field that changes what the study compares."""
    if stored is None:
        raise UserError(f"study {name!r} in this storage was not made by autoprune; choose another --study")
    def was(k: str) -> Any:
        return stored["config"].get(k, IDENTITY_DEFAULTS.get(k))

    diff = [k for k in IDENTITY if was(k) != config.get(k, IDENTITY_DEFAULTS.get(k))]
    if diff:
        details = "; ".join(f"{k}: stored {was(k)!r}, now {config.get(k)!r}" for k in diff)
        raise UserError(
            f"study {name!r} exists with a different setup ({details}). Resume it with the same "
            "settings, or start a new one with --study NEW_NAME"
        )


def load(storage_url: str, name: str | None) -> optuna.Study:
    """An existing autoprune study; ``name`` may be omitted when the storage holds one study."""
    if storage_url.startswith("sqlite:///") and not Path(storage_url[len("sqlite:///"):]).expanduser().is_file():
        raise UserError(f"no study database at {storage_url} (run 'autoprune search' first, or pass --storage)")
    storage = open_storage(storage_url)
    studies = storage.get_all_studies()
    names = [s.study_name for s in studies]
    if name is None:
        if len(names) != 1:
            raise UserError(f"storage {storage_url} holds {len(names)} studies ({', '.join(names) or 'none'}); name one with --study")
        name = names[0]
    if name not in names:
        raise unknown_choice(f"study in {storage_url}:", name, names) if names else UserError(
            f"storage {storage_url} holds no study (run 'autoprune search' first)")
    study = optuna.load_study(study_name=name, storage=storage)
    if ATTR not in study.user_attrs:
        raise UserError(f"study {name!r} was not made by autoprune")
    return study


def info(study: optuna.Study) -> dict[str, Any]:
    return study.user_attrs[ATTR]


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values()) if trial.constraints else bool(trial.user_attrs.get("feasible", True))


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def pareto_front(trials: list[FrozenTrial], directions: list[optuna.study.StudyDirection]) -> list[FrozenTrial]:
    """Non-dominated trials among ``trials``, sorted by FLOPs."""
    signs = [-1 if d == optuna.study.StudyDirection.MAXIMIZE else 1 for d in directions]
    vals = [[s * v for s, v in zip(signs, t.values)] for t in trials]
    front = []
    for i, vi in enumerate(vals):
        dominated = any(
            all(a <= b for a, b in zip(vj, vi)) and any(a < b for a, b in zip(vj, vi))
            for j, vj in enumerate(vals) if j != i
        )
        if not dominated:
            front.append(trials[i])
    # keep one of exact duplicates
    seen, unique = set(), []
    for t in sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number)):
        if tuple(t.values) not in seen:
            seen.add(tuple(t.values))
            unique.append(t)
    return unique


def ranked_feasible(study: optuna.Study) -> list[FrozenTrial]:
    """Completed feasible trials, best search-val accuracy first (ties: fewer FLOPs, then the earlier trial)."""
    return sorted((t for t in completed(study) if is_feasible(t)), key=lambda t: (-t.values[0], t.values[1], t.number))


def best_feasible(study: optuna.Study) -> FrozenTrial | None:
    ranked = ranked_feasible(study)
    return ranked[0] if ranked else None


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    trials: int,
    timeout: float | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run until ``trials`` trials have been fine-tuned, fully or until stopped early
    (over-budget policies are rejected before any training and do not count), or
    ``timeout`` seconds. Returns counts."""
    counts: dict[str, Any] = {"complete": 0, "early_stopped": 0, "infeasible": 0, "failed": 0}
    reasons: dict[str, list[int]] = {}  # why trials failed -> their numbers
    counts["failures"] = reasons
    max_infeasible = 50 * trials + 200  # a budget the space can hardly reach: stop sampling at some point
    best = [max((t.values[0] for t in completed(study) if is_feasible(t)), default=-math.inf)]
    streak = [0]  # consecutive failed trials
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=trials, desc="trials", unit="trial", dynamic_ncols=True, file=sys.stderr)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
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
        if counts["complete"] + counts["early_stopped"] >= trials:
            study.stop()
        elif counts["infeasible"] >= max_infeasible:
            print(f"\nstopping: {counts['infeasible']} sampled policies were over budget; "
                  "loosen the budget or lower keep_min", file=sys.stderr)
            study.stop()

    try:
        # A trial that fails (the objective stores why) is recorded as failed instead of ending
        # the search; three failures in a row end it.
        study.optimize(objective, n_trials=None, timeout=timeout, callbacks=[callback], gc_after_trial=False,
                       catch=(TrialFailed,))
    finally:
        if bar is not None:
            bar.close()
    return counts
