"""The first trials of a new study: uniform pruning at the budget (and at the reference levels of
a ``front`` space), the sensitivity-derived policy, a ``local`` space's anchor."""

from __future__ import annotations

import optuna

from autoprune.core.batches import Split
from autoprune.core.budget import Budget
from autoprune.core.device import Runtime
from autoprune.core.measure.flops import count_flops, count_params
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner
from autoprune.policy_search.plan import importance_for_analysis, sensitivity_policy
from autoprune.policy_search.space import (
    SPEND_PARAM,
    SPEND_STEPS,
    Space,
    widths_of,
)
from autoprune.task.config import SearchConfig


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
    """Enqueue the first trials of a new study: ``uniform`` = uniform pruning at the budget (what an
    engineer would try by hand); ``sensitivity`` =
    a policy that meets the budget by pruning the least sensitive groups first. A ``local``
    space always starts with its anchor (the sensitivity policy, filled to the budget); its
    ``uniform`` trial is the nearest one the space holds (exact where every group's keep is
    within a factor 2 of the anchor's). A ``front`` space also tries
    uniform at the reference curves' lower levels, after the others."""
    method = importance_for_analysis(config)
    example_input = pruner.example_input

    def fits(policy: Policy) -> bool:
        model, _ = pruner.apply(policy)
        return count_flops(model, example_input) <= budget.flops and (
            budget.params is None or count_params(model) <= budget.params)

    if space.shape == "local":
        anchor = Policy({gid: GroupChoice(method, k) for gid, k in (space.anchor or {}).items()},
                        distill=space.distill == "on")
        study.enqueue_trial(space.params_for(anchor), user_attrs={"warm_start": f"sensitivity {method} (the anchor)"})
        if "uniform" in config.warm_start:
            uniform = space.uniform(pruner.groups, 1.0, method)
            study.enqueue_trial(space.params_for(uniform, widths_of(uniform, space.anchor)),
                                user_attrs={"warm_start": f"uniform {method} at the budget (nearest in the local space)"})
        return
    if "uniform" in config.warm_start:
        # width 0 everywhere: the scale is solved at the trial, so this is uniform at the budget
        uniform = space.uniform(pruner.groups, 1.0, method)
        study.enqueue_trial(space.params_for(uniform), user_attrs={"warm_start": f"uniform {method} at the budget"})
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
