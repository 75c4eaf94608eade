"""``autoprune sensitivity``: accuracy after pruning each group alone, and a policy derived from it."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprune.cli.common import config_from_args, out_dir, set_threads


def run(args: argparse.Namespace) -> int:
    from autoprune.core import sensitivity
    from autoprune.core.units import human
    from autoprune.policy_search.plan import importance_for_analysis, plan
    from autoprune.task.baseline import get_dense
    from autoprune.task.setup import load_config_task, pruner_of, runtime_of

    budget_given = bool(args.budget_flops)
    if not budget_given:
        args.budget_flops = "1"
    config = config_from_args(args)
    set_threads(config.threads)
    task = load_config_task(config)
    runtime = runtime_of(config, task)
    example = task.example_input()
    dense = get_dense(config, task, progress=not args.quiet, runtime=runtime)
    pruner = pruner_of(dense.model, example, config)
    # the same method, hence the same cached analysis and policy, as --warm-start sensitivity / --space local
    result = sensitivity.analyse(pruner, task.plain_train, task.val, config.keep_levels,
                                 method=importance_for_analysis(config), batch_size=config.batch_size,
                                 seed=config.seed, progress=not args.quiet, cache_dir=Path(config.cache_dir),
                                 runtime=runtime)
    paths = sensitivity.write(result, out_dir(args, config.study_name))
    print(sensitivity.format_table(result))
    if budget_given:
        the_plan = plan(dense.model, example, config)
        policy = sensitivity.derived_policy(result, pruner, config.keep_levels, the_plan.budget.flops)
        if policy is None:
            print(f"no policy from single-group sensitivity meets {human(the_plan.budget.flops)} FLOPs")
        else:
            print(f"\npolicy for {human(the_plan.budget.flops)} FLOPs, least sensitive groups pruned first: "
                  + ", ".join(f"{gid} {g.keep:g}" for gid, g in policy.groups.items()))
    print(f"\nwrote {paths['json']}, {paths['png']}")
    return 0
