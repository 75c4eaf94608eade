"""The Optuna study: creation or resumption, sampler, identity checks on resume, and reading
results back (feasible, Pareto front, retries). The loop itself is in ``_optimize.py``."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import UserError, unknown_choice
from autoprune.store.storage import (  # open_storage: the pipeline and scripts use it from here
    open_storage,
    retry_trial,
)

METRIC_NAMES = ("accuracy", "flops", "params")


class TrialFailed(RuntimeError):
    """A trial that could not be completed; its reason is stored with the trial."""


ATTR = "autoprune"
#: the study attribute holding ``--compute``'s final round (ship/final.py writes it)
FINAL_ATTR = "final"
#: the study attribute holding what the search's share of ``--compute`` pays for (plan.SearchCompute)
SEARCH_COMPUTE_ATTR = "search_compute"
#: Config fields that define what a study compares; resuming with other values is refused.
IDENTITY = ("model", "dataset", "checkpoint", "val_size", "split_seed", "budget_flops", "budget_params",
            "params_objective", "space", "methods", "keep_min", "keep_step", "round_to",
            "min_channels", "ignore", "distill", "finetune_steps", "seed", "reconstruct", "prune_stem", "augment",
            "prune_steps", "front_floor", "budget_latency", "latency_batch", "latency_runtime")
#: what a study stored before a key existed means (so that older studies still resume)
IDENTITY_DEFAULTS: dict[str, Any] = {"reconstruct": False, "prune_stem": False, "augment": True, "prune_steps": 1,
                                     "front_floor": 0.25, "budget_latency": None, "latency_batch": 1,
                                     "latency_runtime": "torch"}


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
    worker: int | None = None,
) -> tuple[optuna.Study, bool]:
    """The study ``name``, created with ``attrs`` stored, or resumed if its stored identity
    matches. Returns (study, resumed). The sampler's seed: see :func:`sampler_seed`."""
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
        study = optuna.load_study(study_name=name, storage=storage,
                                  sampler=make_sampler(sampler, seed=sampler_seed(seed, worker, n_done)))
        return study, True
    directions = ["maximize", "minimize", "minimize"][:n_obj]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                sampler=make_sampler(sampler, seed=sampler_seed(seed, worker, 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(METRIC_NAMES[:n_obj]))
    study.set_user_attr(ATTR, attrs)
    return study, False


def sampler_seed(seed: int, worker: int | None, n_done: int) -> int:
    """The sampler's seed. One process alone (``worker`` None): ``seed`` plus the trials the
    study already holds, so a search, and each resumption of it, samples reproducibly.
    Worker ``k`` of several: a seed drawn from (seed, k, trials held), so workers started
    together sample different policies, and worker k of a rerun samples as it did."""
    if worker is None:
        return seed + n_done
    digest = hashlib.sha256(f"autoprune-worker:{seed}:{worker}:{n_done}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


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
    """An existing autoprune study; ``name`` may be omitted when the storage holds one study.
    Nothing is written to a storage that holds no study."""
    storage = open_storage(storage_url, create=False)
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


def trials_compute(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> int:
    """FLOPs the study's trials (or ``trials``, read already) have spent (their ``compute``
    attribute), whatever their state."""
    return sum(int(t.user_attrs.get("compute", {}).get("total_flops", 0))
               for t in (study.get_trials(deepcopy=False) if trials is None else trials))


def trained_count(study: optuna.Study) -> int:
    """Trials fine-tuned in the study: completed, or stopped early."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
               if t.state == TrialState.COMPLETE or t.user_attrs.get("early_stopped"))


def requeue(study: optuna.Study, trial_id: int) -> None:
    """Fail the interrupted trial ``trial_id`` (unless it finished) and queue a copy of it, so
    that the next worker runs it again (Optuna's retry of a stale trial, at once)."""
    storage = study._storage
    trial = storage.get_trial(trial_id)
    if trial.state == TrialState.RUNNING:
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    elif trial.state != TrialState.FAIL:
        return  # it finished (completed, or rejected) before the interrupt
    retry_trial(study, storage.get_trial(trial_id))


def failure_reason(trial: FrozenTrial, retried_as: dict[int, int]) -> str:
    """Why a failed trial failed; ``retried_as``: failed trial number -> the number of its retry."""
    reason = trial.user_attrs.get("reason") or (
        "its worker stopped (no heartbeat)" if trial.number in retried_as else "failed (no reason stored)")
    if trial.number in retried_as and "queued again" not in reason:
        reason += "; queued again"
    return reason


def retries(trials: list[FrozenTrial]) -> dict[int, int]:
    """Failed trial number -> the trial that runs it again (Optuna's retry bookkeeping)."""
    return {t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs}
