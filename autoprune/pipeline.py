"""Search orchestration shared by the CLI and the Python API:
config -> task -> budget check -> dense baseline -> study -> trials -> front."""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autoprune import artifacts, dashboard, reference, sensitivity
from autoprune import study as studies
from autoprune.baseline import get_dense, skeleton
from autoprune.config import SearchConfig, human, resolve_budget
from autoprune.data import Split
from autoprune.device import Runtime, torch_threads
from autoprune.errors import UserError
from autoprune.latency import LatencyBudget, meter_of
from autoprune.measure import FLOP_CONVENTION, count_flops, count_params
from autoprune.budget import Budget
from autoprune.objective import Objective, TrialSettings
from autoprune.policy import GroupChoice, Policy
from autoprune.prune import Pruner
from autoprune.space import (
    BLEND_PARAM,
    BLEND_STEPS_PER_UNIT,
    SPEND_PARAM,
    SPEND_STEPS,
    Space,
    blend_order,
    widths_of,
)
from autoprune.task import calibration_of, load_config_task, pruner_of, reconstruction_images, runtime_of
from autoprune.train import evaluate


@dataclass(frozen=True)
class Plan:
    dense_flops: int
    dense_params: int
    budget: Budget
    min_flops: int
    ignored: list[str]
    groups: int
    excluded: dict[str, str]  # groups kept whole because pruning them breaks the network


def check_forward(model: nn.Module, example_input: torch.Tensor, name: str) -> None:
    """One forward pass on the task's input shape; a model that rejects it is a UserError."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(example_input)
    except Exception as exc:  # noqa: BLE001 - the user's model
        lines = str(exc).strip().splitlines()
        if "size is too small" in str(exc) or "Kernel size can't be greater" in str(exc):
            raise UserError(
                f"the input {tuple(example_input.shape[1:])} is too small for {type(model).__name__} ({name}): its "
                f"forward pass fails ({lines[0][:160]}); use larger images (--image-size) or a model for small inputs"
            ) from exc
        raise UserError(
            f"model {name!r} fails on the task's input of shape {tuple(example_input.shape[1:])}: "
            f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError(f"model {name!r} must return logits of shape (batch, classes); it returned "
                        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")


def plan(model: nn.Module, example_input: torch.Tensor, config: SearchConfig, *,
         stored: dict[str, Any] | None = None, device: torch.device | None = None) -> Plan:
    """Dense FLOPs, the absolute budget, and the smallest FLOPs the space can reach. Depends
    on the architecture only, so it runs on an untrained model, before any training.

    With ``budget_latency`` and no ``budget_flops``, the FLOPs budget is that of uniform
    pruning at the largest keep ratio whose measured latency meets the latency budget
    (``device``: where latency is measured); a study that exists (``stored``: its autoprune
    attributes) keeps the FLOPs budget it was created with, so that workers on other machines
    search the same range."""
    check_forward(model, example_input, config.model)
    dense_flops = count_flops(model, example_input)
    dense_params = count_params(model)
    pruner = pruner_of(model, example_input, config)
    latency = LatencyBudget.parse(config.budget_latency, "budget_latency") if config.budget_latency else None
    if config.budget_flops:
        flops_budget = resolve_budget(config.budget_flops, dense_flops, "budget_flops")
    elif stored and stored.get("budget", {}).get("flops"):
        flops_budget = int(stored["budget"]["flops"])
    else:
        flops_budget = latency_flops_budget(model, example_input, pruner, config, latency, device)
    budget = Budget(
        flops=flops_budget,
        params=resolve_budget(config.budget_params, dense_params, "budget_params") if config.budget_params else None,
        latency=latency,
    )
    ignored = pruner.ignored
    widest = max((g.channels for g in pruner.groups), default=0)
    if pruner.groups and config.round_to > widest:
        raise UserError(f"round_to {config.round_to} is larger than every prunable group (the widest has {widest} "
                        f"channels); use a round_to of at most {widest}, such as 8")
    space = space_of(config)
    structural = [m for m in config.methods if m != "unstructured"]
    if structural:  # unstructured sparsity alone never lowers FLOPs or the parameter count
        smallest, _ = pruner.apply(space.uniform(pruner.groups, config.keep_min, "l1"))  # counts only
        min_flops, min_params = count_flops(smallest, example_input), count_params(smallest)
    else:
        min_flops, min_params = dense_flops, dense_params
    if budget.flops < min_flops:
        raise UserError(
            f"budget_flops {config.budget_flops} = {human(budget.flops)} FLOPs is below the smallest this "
            f"search space reaches: {human(min_flops)} ({min_flops / dense_flops:.3f} of dense "
            f"{human(dense_flops)}) with every group at keep_min {config.keep_min}; "
            f"{', '.join(ignored)} and every channel coupled to them are never pruned. Raise the budget, "
            f"lower --keep-min / --min-channels{'' if config.prune_stem else ', or add --prune-stem'}"
        )
    if budget.params is not None and budget.params < min_params:
        raise UserError(
            f"budget_params {config.budget_params} = {human(budget.params)} parameters is below the smallest "
            f"this search space reaches: {human(min_params)} ({min_params / dense_params:.3f} of dense)"
        )
    return Plan(dense_flops, dense_params, budget, min_flops, ignored, len(pruner.groups), dict(pruner.excluded))


def latency_flops_budget(model: nn.Module, example_input: torch.Tensor, pruner: Pruner, config: SearchConfig,
                         budget: LatencyBudget, device: torch.device | None) -> int:
    """The FLOPs of uniform pruning at the largest keep ratio that meets ``budget`` (what a
    search with only a latency budget spends at most)."""
    from autoprune.budget import uniform_within_latency

    meter = meter_of(config, model, example_input, device)
    policy, m = uniform_within_latency(pruner, meter, budget, keep_min=config.keep_min)
    if policy is None:
        raise UserError(
            f"budget_latency {config.budget_latency} is below what this search space reaches: every group at "
            f"keep_min {config.keep_min} measures {m['ms']:.3g} ms, {m['ratio']:.3f} of dense ({m['dense_ms']:.3g} ms; "
            f"{meter.describe()}). Raise the budget, lower --keep-min, or measure at another --latency-batch"
        )
    return count_flops(pruner.apply(policy)[0], example_input)


def space_of(config: SearchConfig, anchor: dict[str, float] | None = None) -> Space:
    # a blend space moves along one line, between two policies of the analysis' method
    methods = (importance_for_analysis(config),) if config.space == "blend" else tuple(config.methods)
    return Space(levels=tuple(config.keep_levels), methods=methods, distill=config.distill,
                 shape=config.space, anchor=anchor, floor=config.front_floor)


def importance_for_analysis(config: SearchConfig) -> str:
    """The importance method the sensitivity analysis and the uniform warm start use."""
    return "l1" if "l1" in config.methods else config.methods[0]


def sensitivity_policy(
    pruner: Pruner,
    budget: Budget,
    config: SearchConfig,
    train: Split,
    val: Split,
    *,
    progress: bool = False,
    runtime: Runtime | None = None,
) -> tuple[dict[str, Any], Policy | None]:
    """The per-group sensitivity analysis (read from the cache when the same one ran before)
    and the policy derived from it that meets the budget (None if it cannot)."""
    levels = list(config.keep_levels)
    result = sensitivity.analyse(pruner, train, val, levels, method=importance_for_analysis(config),
                                 batch_size=config.batch_size, seed=config.seed, progress=progress,
                                 cache_dir=Path(config.cache_dir), runtime=runtime)
    return result, sensitivity.derived_policy(result, pruner, levels, budget.flops)


#: the study attribute that holds a ``local`` or ``blend`` space's anchor keeps (so a resumed study and
#: every worker sample around the same policy)
ANCHOR_ATTR = "anchor"


def local_anchor(
    stored: dict[str, Any] | None,
    config: SearchConfig,
    derive: Callable[[], tuple[dict[str, Any], Policy | None]],
) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
    """A ``local`` or ``blend`` space's anchor keeps and the sensitivity analysis they come
    from (None for the other spaces). A study that exists (``stored``: its user attributes) keeps its own
    anchor; a new one derives it, before the study is created, so that a failure leaves no
    study behind that would later resume without its warm start."""
    if config.space not in ("local", "blend"):
        return None, None
    if stored and stored.get(ANCHOR_ATTR):
        return {gid: float(k) for gid, k in stored[ANCHOR_ATTR].items()}, None
    result, policy = derive()  # sensitivity_policy(...): the analysis, and the policy derived from it
    if policy is None:
        raise UserError(
            f"the sensitivity analysis found no policy on the keep levels {list(config.keep_levels)} that meets "
            f"budget_flops {config.budget_flops}, so the {config.space!r} space has no policy to search around; lower "
            "--keep-min, or use --space fill"
        )
    return {gid: c.keep for gid, c in policy.groups.items()}, result


def warm_start(
    study: optuna.Study,
    pruner: Pruner,
    space: Space,
    budget: Budget,
    config: SearchConfig,
    train: Split,
    val: Split,
    *,
    progress: bool = False,
    runtime: Runtime | None = None,
) -> None:
    """Enqueue the first trials of a new study: ``uniform`` = uniform pruning at the largest
    keep level that meets the budget (what an engineer would try by hand); ``sensitivity`` =
    a policy that meets the budget by pruning the least sensitive groups first. A ``local``
    space always starts with its anchor (the sensitivity policy, filled to the budget); its
    ``uniform`` trial is the nearest one the space holds (exact where every group's keep is
    within a factor 2 of the anchor's). A ``blend`` space enqueues every point of its line,
    coarse to fine (the anchor, uniform, then halving the gaps). A ``front`` space also tries
    uniform at the reference curves' lower levels, after the others."""
    method = importance_for_analysis(config)
    example_input = pruner.example_input

    def fits(policy: Policy) -> bool:
        model, _ = pruner.apply(policy)
        return count_flops(model, example_input) <= budget.flops and (
            budget.params is None or count_params(model) <= budget.params)

    if space.shape == "blend":
        for b in blend_order():
            t = b / BLEND_STEPS_PER_UNIT
            label = "uniform" if b == 0 else "the anchor (sensitivity)" if b == BLEND_STEPS_PER_UNIT else "blend"
            study.enqueue_trial({BLEND_PARAM: b}, user_attrs={"warm_start": f"{label} {method}, t={t:g}"})
        return
    if space.shape == "local":
        anchor = Policy({gid: GroupChoice(method, k) for gid, k in (space.anchor or {}).items()},
                        distill=space.distill == "on")
        study.enqueue_trial(space.params_for(anchor), user_attrs={"warm_start": f"sensitivity {method} (the anchor)"})
        if "uniform" in config.warm_start:
            uniform = space.uniform(pruner.groups, 1.0, method)
            study.enqueue_trial(space.params_for(uniform, widths_of(uniform, space.anchor)),
                                user_attrs={"warm_start": f"uniform {method} at the budget (nearest in the local space)"})
        return
    if "uniform" in config.warm_start and space.shape in ("fill", "front"):
        # width 0 everywhere: the scale is solved at the trial, so this is uniform at the budget
        uniform = space.uniform(pruner.groups, 1.0, method)
        study.enqueue_trial(space.params_for(uniform), user_attrs={"warm_start": f"uniform {method} at the budget"})
    elif "uniform" in config.warm_start:
        for keep in sorted(space.levels, reverse=True):
            policy = space.uniform(pruner.groups, keep, method)
            if fits(policy):
                study.enqueue_trial(space.params_for(policy), user_attrs={"warm_start": f"uniform {method} keep {keep}"})
                break
    if "sensitivity" in config.warm_start:
        result, policy = sensitivity_policy(pruner, budget, config, train, val, progress=progress, runtime=runtime)
        study.set_user_attr("sensitivity", result)
        if policy is not None and fits(policy):
            policy = Policy(policy.groups, distill=space.distill == "on")
            study.enqueue_trial(space.params_for(policy, widths_of(policy)),
                                user_attrs={"warm_start": f"sensitivity {method}"})
    if "uniform" in config.warm_start and space.shape == "front":
        # then uniform at the reference curves' lower levels (spend levels SPEND_STEPS/2 and 0 of
        # 0..SPEND_STEPS = floor ** 0.5 and floor of the budget): the front then holds uniform pruning
        # wherever the curves are measured, and a searched point shows on it only where it beats uniform
        uniform = space.uniform(pruner.groups, 1.0, method)
        smallest = pruner.predict_flops(space.uniform(pruner.groups, space.levels[0], method))
        for s in (SPEND_STEPS // 2, 0):
            if space.spend(s) * budget.flops >= smallest:
                study.enqueue_trial({**space.params_for(uniform), SPEND_PARAM: s},
                                    user_attrs={"warm_start": f"uniform {method} at {space.spend(s):.3g} of the budget"})


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
            "units": {"flops": FLOP_CONVENTION, "accuracy": "top-1 on the search-val split, in [0, 1]",
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
        try:
            counts = studies.optimize(study, objective, trials=config.trials, timeout=config.timeout, progress=progress,
                                      until=until, worker={"index": worker, "threads": torch.get_num_threads(),
                                                           "device": rt.describe()})
        finally:
            dashboard.publish(study)  # the note and charts follow the trials, also after Ctrl-C
        return study, counts


#: the study attribute holding the reference curves (report.py and dashboard.py read it)
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
    from autoprune.storage import check_writable

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
        dense_info={"checkpoint": str(Path(dense.checkpoint).resolve()), "sha256": dense.sha256},
        progress=progress, runtime=runtime, dense_file=Path(dense.checkpoint), worker=worker, until=until,
        setup_only=setup_only,
    )
    return study, counts
