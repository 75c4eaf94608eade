"""Before any training: the plan of a search (dense FLOPs, the absolute budget, the smallest
reachable FLOPs, the groups kept whole), its space, and the anchor a ``local`` space samples around."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.core import sensitivity
from autoprune.core.batches import Split
from autoprune.core.budget import Budget, largest_fitting
from autoprune.core.device import Runtime
from autoprune.core.importance import IMPORTANCES
from autoprune.core.measure.flops import count_flops, count_params
from autoprune.core.measure.latency import LatencyBudget
from autoprune.core.policy import Policy
from autoprune.core.prune import Pruner
from autoprune.core.units import human, resolve_budget
from autoprune.errors import UserError
from autoprune.policy_search.space import (
    Space,
)
from autoprune.task.config import SearchConfig
from autoprune.task.setup import meter_of, pruner_of


@dataclass(frozen=True)
class Plan:
    dense_flops: int
    dense_params: int
    budget: Budget
    min_flops: int
    ignored: list[str]
    groups: int
    excluded: dict[str, str]  # groups kept whole because pruning them breaks the network


#: How ``--compute E`` is split, as fractions of E: the search (cheap trials, until their compute
#: reaches this share), the final round (uniform L1, global magnitude and the best searched
#: policy, each recovered briefly and scored on search-val), and the rest: the recovery of the
#: pick. docs/benchmarks.md ("the split") measured 0.1 / 0.2 with two searched finalists, and
#: 0.1 / 0.1 and 0.1 / 0.05 with one, on SmallCNN: the last two picked the same policy in every
#: run compared, so the cheaper ships, and its pick recovers with 85% of E.
COMPUTE_SPLIT = {"search": 0.1, "final": 0.05}
#: A ``--compute`` search whose share pays for fewer trials than this is not run, nor is its
#: final round: uniform L1 ships, recovered with all of E. Searches of 4 and 9 policies tied or
#: lost against uniform L1 given all of E (-0.02 to -0.61 pt), those of 18 or more won (+0.12 to
#: +0.36; docs/benchmarks.md, "too small to search"); fewer than 10 trials are also all random
#: draws of Optuna's TPE, which models the space after its first 10.
MIN_SEARCH_TRIALS = 10


@dataclass(frozen=True)
class SearchCompute:
    """What the search's share of ``--compute`` buys, predicted before any trial (the trials'
    own ledgers then measure it): compute in dense epochs."""

    share: float  # the search's share of E
    per_trial: float  # one trial at the budget: BatchNorm recalibration, layer refit, fine-tune, search-val
    once: float  # once per search: importance calibration, and the dense outputs the layer refits fit to
    trials: int  # how many trials the share pays for
    least_compute: float  # the smallest --compute whose share pays for MIN_SEARCH_TRIALS trials

    @property
    def runs(self) -> bool:
        return self.trials >= MIN_SEARCH_TRIALS

    def to_dict(self) -> dict[str, Any]:
        return {"search_dense_epochs": round(self.share, 6), "per_trial_dense_epochs": round(self.per_trial, 6),
                "once_dense_epochs": round(self.once, 6), "trials": self.trials, "min_trials": MIN_SEARCH_TRIALS,
                "least_compute": self.least_compute, "runs": self.runs}


def skipped_reason(planned: dict[str, Any], compute: float) -> str:
    """Why a --compute search was not run, and the --compute at which it would be."""
    return (f"its share of --compute {compute:g} ({planned['search_dense_epochs']:.3g} dense epochs) pays for "
            f"{planned['trials']} trials of {planned['per_trial_dense_epochs']:.3g} dense epochs each, fewer than "
            f"{planned['min_trials']} (no smaller search beat uniform pruning in the benchmark); --compute "
            f"{planned['least_compute']:g} or more lets it search")


def search_compute(config: SearchConfig, the_plan: Plan, *, train_images: int, bn_images: int,
                   val_images: int) -> SearchCompute:
    """How many trials the search's share of ``config.compute`` pays for. A ``fill`` trial spends
    the whole FLOPs budget, so each costs its forward passes (BatchNorm recalibration, the layer
    refit's pruned pass, search-val) and fine-tune steps at the budget's FLOPs per image. Once per
    search, the dense model runs the importance methods' calibration and records the refit's
    targets (objective.py charges the same passes)."""
    epoch = 3 * the_plan.dense_flops * train_images
    forward = min(config.bn_batches * config.batch_size, bn_images) + val_images
    # once per search, through the dense model: the importance methods' calibration passes (cached)
    passes = sum(IMPORTANCES.get(m).calibration_passes for m in config.methods if m in IMPORTANCES)
    once = passes * min(config.calib_images, bn_images) * the_plan.dense_flops
    if config.reconstruct:  # and the dense outputs the refits fit to; each trial then runs one pruned pass
        images = min(config.reconstruct_images, bn_images)
        forward += images
        once += images * the_plan.dense_flops
    per_trial = (forward + 3 * config.finetune_steps * config.batch_size) * the_plan.budget.flops
    share = COMPUTE_SPLIT["search"] * float(config.compute or 0) * epoch
    trials = max(0, int((share - once) // per_trial)) if per_trial > 0 else 0
    least = (MIN_SEARCH_TRIALS * per_trial + once) / (COMPUTE_SPLIT["search"] * epoch)
    return SearchCompute(share=share / epoch, per_trial=per_trial / epoch, once=once / epoch, trials=trials,
                         least_compute=math.ceil(least * 100) / 100)


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
    if config.budget_flops and budget.flops >= dense_flops and structural_methods(config):
        raise UserError(
            f"budget_flops {config.budget_flops} = {human(budget.flops)} FLOPs is at or above the dense model's {human(dense_flops)}: "
            "nothing would be pruned. Give a fraction of dense below 1, such as --budget-flops 0.5"
        )
    ignored = pruner.ignored
    widest = max((g.channels for g in pruner.groups), default=0)
    if pruner.groups and config.round_to > widest:
        raise UserError(f"round_to {config.round_to} is larger than every prunable group (the widest has {widest} "
                        f"channels); use a round_to of at most {widest}, such as 8")
    space = space_of(config)
    if structural_methods(config):  # unstructured sparsity alone never lowers FLOPs or the parameter count
        smallest, _ = pruner.apply(space.uniform(pruner.groups, config.keep_min, "l1"))  # counts only
        min_flops, min_params = count_flops(smallest, example_input), count_params(smallest)
    else:
        min_flops, min_params = dense_flops, dense_params
    if budget.flops < min_flops:
        lower = keep_min_for(pruner, space, budget.flops, config.keep_min)
        advice = [f"add --keep-min {lower:g}"] if lower else []
        advice += [] if config.prune_stem else ["add --prune-stem"]
        raise UserError(
            f"budget_flops {config.budget_flops} = {human(budget.flops)} FLOPs is below the smallest this "
            f"search space reaches: {human(min_flops)} ({min_flops / dense_flops:.3f} of dense "
            f"{human(dense_flops)}) with every group at keep_min {config.keep_min}; "
            f"{', '.join(ignored)} and every channel coupled to them are never pruned. Raise the budget"
            + "".join(f", or {a}" for a in advice)
        )
    if budget.params is not None and budget.params < min_params:
        raise UserError(
            f"budget_params {config.budget_params} = {human(budget.params)} parameters is below the smallest "
            f"this search space reaches: {human(min_params)} ({min_params / dense_params:.3f} of dense)"
        )
    return Plan(dense_flops, dense_params, budget, min_flops, ignored, len(pruner.groups), dict(pruner.excluded))


def structural_methods(config: SearchConfig) -> list[str]:
    """The methods that remove channels (unstructured sparsity alone never lowers FLOPs)."""
    return [m for m in config.methods if m != "unstructured"]


def keep_min_for(pruner: Pruner, space: Space, flops: int, keep_min: float) -> float | None:
    """A ``--keep-min`` (two decimals, below ``keep_min``) at which uniform pruning fits ``flops``
    by predicted FLOPs, so that the space reaches the budget; None if no keep ratio does."""
    def fits(k: float) -> bool:
        return pruner.predict_flops(space.uniform(pruner.groups, k, "l1")) <= flops

    if not fits(0.01):
        return None
    k = math.floor(largest_fitting(fits, 0.01, keep_min, iterations=20) * 100) / 100
    return k if 0.01 <= k < keep_min and fits(k) else None


def latency_flops_budget(model: nn.Module, example_input: torch.Tensor, pruner: Pruner, config: SearchConfig,
                         budget: LatencyBudget, device: torch.device | None) -> int:
    """The FLOPs of uniform pruning at the largest keep ratio that meets ``budget`` (what a
    search with only a latency budget spends at most)."""
    from autoprune.core.budget import uniform_within_latency

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
    return Space(levels=tuple(config.keep_levels), methods=tuple(config.methods), distill=config.distill,
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


#: the study attribute that holds a ``local`` space's anchor keeps (so a resumed study and
#: every worker sample around the same policy)
ANCHOR_ATTR = "anchor"


def local_anchor(
    stored: dict[str, Any] | None,
    config: SearchConfig,
    derive: Callable[[], tuple[dict[str, Any], Policy | None]],
) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
    """A ``local`` space's anchor keeps and the sensitivity analysis they come
    from (None for the other spaces). A study that exists (``stored``: its user attributes) keeps its own
    anchor; a new one derives it, before the study is created, so that a failure leaves no
    study behind that would later resume without its warm start."""
    if config.space != "local":
        return None, None
    if stored and stored.get(ANCHOR_ATTR):
        return {gid: float(k) for gid, k in stored[ANCHOR_ATTR].items()}, None
    result, policy = derive()  # sensitivity_policy(...): the analysis, and the policy derived from it
    if policy is None:
        raise UserError(
            f"the sensitivity analysis found no policy on the keep levels {list(config.keep_levels)} that meets "
            f"budget_flops {config.budget_flops}, so the 'local' space has no policy to search around; lower "
            "--keep-min, or use --space fill"
        )
    return {gid: c.keep for gid, c in policy.groups.items()}, result
