"""Running a search: config -> task -> plan -> dense baseline -> study (warm start, reference
curves) -> trials. Shared by the CLI, the Python API and workers."""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autoprune.core.batches import Split
from autoprune.core.compute import COMPUTE_CONVENTION, dense_epoch_flops
from autoprune.core.device import Runtime, torch_threads
from autoprune.core.loops import evaluate
from autoprune.core.measure.flops import FLOP_CONVENTION
from autoprune.core.units import human
from autoprune.policy_search import dashboard, reference
from autoprune.policy_search import study as studies
from autoprune.policy_search._optimize import optimize
from autoprune.policy_search.objective import Objective, TrialSettings
from autoprune.policy_search.plan import (
    ANCHOR_ATTR,
    COMPUTE_SPLIT,
    Plan,
    local_anchor,
    plan,
    search_compute,
    sensitivity_policy,
    skipped_reason,
    space_of,
)
from autoprune.policy_search.warmstart import warm_start
from autoprune.store import artifacts
from autoprune.task.baseline import get_dense, skeleton
from autoprune.task.config import SearchConfig
from autoprune.task.setup import (
    calibration_of,
    load_config_task,
    meter_of,
    pruner_of,
    reconstruction_images,
    runtime_of,
)


def search_model(
    *,
    dense: nn.Module,
    train: Split,
    val: Split,
    example_input: torch.Tensor,
    config: SearchConfig,
    the_plan: Plan,
    dense_info: dict[str, Any],
    progress: bool = True,
    runtime: Runtime | None = None,
    bn_data: Split | None = None,
    dense_file: Path | None = None,
    worker: int | None = None,
    until: int | None = None,
    setup_only: bool = False,
) -> tuple[optuna.Study, dict[str, Any]]:
    """Create or resume the study and run the trials. ``dense`` is trained already and lives
    on the CPU (trials prune there, then train and score on ``runtime.device``). Runs on
    ``config.threads`` CPU threads, if set; the caller's setting is restored afterwards.

    ``dense_file``: its checkpoint, put in the study's artifact store when the study is
    created. ``worker``: this process's index among several (its sampler seed; None: alone).
    ``until``: stop when the study holds this many trained trials (several workers share the
    count) instead of after ``config.trials`` of this process. ``setup_only``: create the
    study (warm start, reference curves) and run no trial, for workers to join."""
    rt = runtime if runtime is not None else Runtime()
    with torch_threads(config.threads):
        storage = studies.open_storage(config.storage_url, heartbeat=config.heartbeat, outage_s=config.db_retry)
        bn = bn_data if bn_data is not None else train
        with torch.no_grad():
            scored = dense if rt.device.type == "cpu" else copy.deepcopy(dense).to(rt.device)
            dense_info = {**dense_info, "flops": the_plan.dense_flops, "params": the_plan.dense_params,
                          "epoch_flops": dense_epoch_flops(the_plan.dense_flops, len(train)),
                          "val_accuracy": evaluate(scored, val, amp=rt.amp, workers=rt.workers)}
            del scored
        attrs = {
            "config": config.to_dict(),
            "dense": dense_info,
            "budget": {"flops": the_plan.budget.flops, "params": the_plan.budget.params, "min_flops": the_plan.min_flops,
                       "latency": dataclasses.asdict(the_plan.budget.latency) if the_plan.budget.latency else None},
            "ignored": the_plan.ignored,
            "excluded": the_plan.excluded,
            "input_shape": list(example_input.shape[1:]),
            "units": {"flops": FLOP_CONVENTION, "compute": COMPUTE_CONVENTION, "accuracy": "top-1 on the search-val split, in [0, 1]",
                      "seconds": f"wall clock on {rt.describe()}"},
        }
        meter = meter_of(config, dense, example_input, rt.device)
        if meter is not None:
            attrs["units"]["latency"] = meter.describe()
        pruner = pruner_of(dense, example_input, config, calibration=calibration_of(config, bn))
        stored = next((s.user_attrs for s in storage.get_all_studies() if s.study_name == config.study_name), None)
        anchor, analysis = local_anchor(stored, config, lambda: sensitivity_policy(
            pruner, the_plan.budget, config, bn, val, progress=progress, runtime=rt))
        if worker is None and stored is not None and not config.storage_url.startswith("sqlite"):
            # another search on a shared study is another worker: its own sampler seed, or it would
            # repeat the trials of one started alongside it
            import secrets

            worker = secrets.randbelow(2**31)
        location = artifacts.absolute(artifact_location(config, stored))
        attrs["artifacts"] = location
        study, resumed = studies.create_or_resume(
            storage, config.study_name, attrs=attrs, sampler=config.sampler, seed=config.seed,
            params_objective=config.params_objective, worker=worker,
        )
        if not resumed and dense_file is not None:
            # workers, apply and confirm on other machines fetch it from there by sha256
            info = studies.info(study)
            info["dense"]["artifact"] = {"store": location, "id": artifacts.upload_dense(study, dense_file, location)}
            study.set_user_attr(studies.ATTR, info)
        if analysis is not None:
            study.set_user_attr("sensitivity", analysis)
        if anchor is not None and ANCHOR_ATTR not in study.user_attrs:
            study.set_user_attr(ANCHOR_ATTR, anchor)
        space = space_of(config, anchor)
        if config.compute:  # what the search's share of --compute pays for, before any of it is spent
            planned = search_compute(config, the_plan, train_images=len(train), bn_images=len(bn), val_images=len(val))
            skipped = not planned.runs and not study.trials
            study.set_user_attr(studies.SEARCH_COMPUTE_ATTR, {**planned.to_dict(), "skipped": skipped})
            if skipped:
                if progress:
                    print(f"search: not run: {skipped_reason(planned.to_dict(), config.compute)}; the baseline gets all of "
                          "the compute as recovery", file=sys.stderr)
                dashboard.publish(study)
                return study, {"complete": 0, "early_stopped": 0, "infeasible": 0, "failed": 0, "failures": {}}
        if not resumed:
            warm_start(study, pruner, space, the_plan.budget, config, bn, val, progress=progress, runtime=rt)
        objective = Objective(
            pruner=pruner, space=space, budget=the_plan.budget, train=train, val=val, bn_data=bn, runtime=rt,
            settings=TrialSettings(
                finetune_steps=config.finetune_steps, finetune_lr=config.finetune_lr, batch_size=config.batch_size,
                bn_batches=config.bn_batches, seed=config.seed, early_stop=config.early_stop,
                early_stop_margin=config.early_stop_margin, prune_steps=config.prune_steps,
            ),
            params_objective=config.params_objective,
            reconstruct_x=reconstruction_images(config, bn) if config.reconstruct else None,
            artifacts=artifacts.store_at(location),
            latency=meter,
        )
        if config.references and REFERENCES_ATTR not in study.user_attrs:
            targets = reference.levels(the_plan.budget.flops, config.front_floor)
            targets = [t for t in targets if t >= the_plan.min_flops] or [the_plan.budget.flops]
            if progress:
                print(f"reference curves: uniform L1 and global magnitude at {len(targets)} FLOPs levels "
                      "(cached per dense model)", file=sys.stderr)
            curves = reference.curves(
                pruner, train, val, targets, steps=config.finetune_steps, lr=config.finetune_lr,
                batch_size=config.batch_size, bn_batches=config.bn_batches, seed=config.seed, runtime=rt, bn_data=bn,
                cache_dir=Path(config.cache_dir), key=f"{dense_info.get('sha256')}|{train.digest()}|{val.digest()}")
            study.set_user_attr(REFERENCES_ATTR, {"curves": curves, "steps": config.finetune_steps})
        dashboard.publish(study)
        if setup_only:
            return study, {}
        # --compute E: the trials stop once they have spent the search's share of E (ship/final.py spends the rest)
        limit = int(COMPUTE_SPLIT["search"] * config.compute * dense_info["epoch_flops"]) if config.compute else None
        try:
            counts = optimize(study, objective, trials=config.trials, timeout=config.timeout, progress=progress,
                              until=until, worker={"index": worker, "threads": torch.get_num_threads(),
                                                   "device": rt.describe()}, compute_limit=limit)
        finally:
            dashboard.publish(study)  # the note and charts follow the trials, also after Ctrl-C
        return study, counts


#: the study attribute holding the reference curves (front.py and dashboard.py read it)
REFERENCES_ATTR = "references"


def artifact_location(config: SearchConfig, stored: dict[str, Any] | None = None) -> str:
    """Where the study's artifacts go (policy.json per trial, the dense checkpoint):
    ``artifact_dir`` if given, else where the study already keeps them, else next to a SQLite
    study (``studies/x.db`` -> ``studies/x-artifacts/``)."""
    if config.artifact_dir:
        return config.artifact_dir
    if stored and stored.get(studies.ATTR, {}).get("artifacts"):
        return stored[studies.ATTR]["artifacts"]
    return artifacts.default_location(config.storage_url, config.study_name)


def storage_ready(config: SearchConfig) -> None:
    """Before any data is read or a model trained: the storage can be written, and the
    artifact store is a folder (or a bucket)."""
    from autoprune.store.storage import check_writable

    check_writable(config.storage_url)
    if config.artifact_dir:
        artifacts.check_location(config.artifact_dir)


def check_resumable(config: SearchConfig) -> dict[str, Any] | None:
    """Refuse early (before training) to resume a study made with another setup; the
    autoprune attributes of the study to resume (None for a new one)."""
    url = config.storage_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).expanduser().exists():
        return None  # a new SQLite file: nothing to resume, and nothing is created yet
    storage = studies.open_storage(url)
    for summary in storage.get_all_studies():
        if summary.study_name == config.study_name:
            stored = summary.user_attrs.get(studies.ATTR)
            studies.check_identity(config.study_name, stored, config.to_dict())
            return stored
    return None


def run_search(config: SearchConfig, *, progress: bool = True, dense_file: Path | None = None,
               worker: int | None = None, until: int | None = None,
               setup_only: bool = False) -> tuple[optuna.Study, dict[str, Any]]:
    """The ``autoprune search`` command: everything up to a stored study. ``dense_file``: the
    dense checkpoint to load (a worker joining a study); the other arguments: see
    :func:`search_model`."""
    t0 = time.perf_counter()
    with torch_threads(config.threads):
        study, counts = _run_search(config, progress=progress, dense_file=dense_file, worker=worker, until=until,
                                    setup_only=setup_only)
    counts["seconds"] = round(time.perf_counter() - t0, 1)
    return study, counts


def _run_search(config: SearchConfig, *, progress: bool, dense_file: Path | None, worker: int | None,
                until: int | None, setup_only: bool) -> tuple[optuna.Study, dict[str, Any]]:
    storage_ready(config)
    task = load_config_task(config)
    runtime = runtime_of(config, task)
    example = task.example_input()
    stored = check_resumable(config)
    the_plan = plan(skeleton(config, task), example, config, stored=stored, device=runtime.device)
    dense = get_dense(config, task, progress=progress, runtime=runtime, path=dense_file)
    if progress:
        print(f"dense {config.model}: {human(the_plan.dense_flops)} FLOPs, {human(the_plan.dense_params)} params; "
              f"budget {human(the_plan.budget.flops)} FLOPs"
              + (f" ({'from ' if not config.budget_flops else 'and '}latency {config.budget_latency})"
                 if config.budget_latency else "")
              + f"; {the_plan.groups} prunable groups; on {runtime.describe()}",
              file=sys.stderr)
        for gid, why in the_plan.excluded.items():
            print(f"kept whole: {gid} ({why})", file=sys.stderr)
    study, counts = search_model(
        dense=dense.model, train=task.train, val=task.val, bn_data=task.plain_train,
        example_input=example, config=config, the_plan=the_plan,
        dense_info={"checkpoint": str(Path(dense.checkpoint).resolve()), "sha256": dense.sha256,
                    # reported apart from the search: a user's own checkpoint cost autoprune nothing
                    "training_dense_epochs": None if config.checkpoint or dense_file else config.dense_epochs},
        progress=progress, runtime=runtime, dense_file=Path(dense.checkpoint), worker=worker, until=until,
        setup_only=setup_only,
    )
    return study, counts
