"""What the benchmarks share: the tasks they run on (dense checkpoints cached and converged the
same way), the hand-picked baselines (uniform L1 and global magnitude at a budget), the
sensitivity-derived policy, and the one recovery recipe every contender gets. Run the
benchmarks from the repository root as modules: ``python -m scripts.bench.quality ...``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


TASKS = {"smallcnn": "smallcnn", "resnet20": "resnet20", "mobilenet_v2": "mobilenet_v2"}


def uniform_policy(pruner, target: int):
    """(b): L1 at one keep ratio for every group, the largest whose model meets ``target``
    FLOPs (counted exactly); the policy and that ratio."""
    from autoprune.core.budget import uniform_at_budget

    policy = uniform_at_budget(pruner, target, "l1")
    return policy, next(iter(policy.groups.values())).keep


def uniform_model(pruner, target: int):
    policy, r = uniform_policy(pruner, target)
    return pruner.apply(policy)[0], f"keep {r:.3f}"


def global_model(dense, example, ignored: list[str], target: int):
    """Torch-Pruning's own global magnitude pruning, ratio solved for the FLOPs target (the
    package's reference rule)."""
    from autoprune.core.budget import global_magnitude

    return global_magnitude(dense, example, ignored, target), "global magnitude"


def load_bench_task(task_name: str, keep_min: float, space: str = "fill", threads: int = 1, prune_stem: bool = False,
                    dense_epochs: int | None = None, checkpoint: str | None = None):
    """(search settings, budget-free config, task, dense model, ignored layers, pruner): what
    every contender of a task starts from. ``dense_epochs``: the dense baseline's epochs (cached
    per value; default the config's, 3); ``checkpoint``: a dense checkpoint file instead (as
    ``bench/compute.py --checkpoint``)."""
    from autoprune.task.baseline import get_dense
    from autoprune.task.config import SearchConfig
    from autoprune.task.setup import calibration_of, load_config_task, pruner_of

    # keep_min 0.125: at 0.1 of dense FLOPs, keep 0.25 everywhere is not small enough
    base = {"model": TASKS[task_name], "dataset": "fashion-mnist", "keep_min": keep_min, "space": space,
            "threads": threads, "prune_stem": prune_stem}
    if dense_epochs is not None:
        base["dense_epochs"] = dense_epochs
    if checkpoint is not None:
        base["checkpoint"] = checkpoint
    config = SearchConfig.from_dict({**base, "budget_flops": "1"})  # budget-free: task and dense only
    task = load_config_task(config)
    example = task.example_input()
    dense = get_dense(config, task).model
    # the same calibration images as the search, for taylor / activation policies
    pruner = pruner_of(dense, example, config, calibration=calibration_of(config, task.train))
    return base, config, task, dense, pruner.ignored, pruner


def recover(model, task, seed: int, steps: int, ledger=None) -> float:
    """The recovery every contender gets (``apply``'s: BN recalibration, ``steps`` of SGD
    fine-tuning at lr 0.01 with ``seed``), then accuracy on the TEST split. The model is
    copied, not changed. A ``ledger`` (autoprune.core.compute) is charged what it ran."""
    import copy

    from autoprune.core.loops import evaluate, recover_model
    from autoprune.core.measure.flops import count_flops

    m = copy.deepcopy(model)
    if ledger is not None:
        ledger.watch(m, count_flops(m, task.example_input()))
    try:
        recover_model(m, task.train, steps=steps, seed=seed)
        return evaluate(m, task.test)
    finally:
        if ledger is not None:
            ledger.close()


def recover_within(pruner, policy, flops: int, task, config, compute: float, ledger):
    """``policy`` pruned and recovered with ``compute`` FLOPs (ship/replay.py's recovery with
    ``config``'s recipe and seed; the steps that the compute pays for at the policy's ``flops``,
    after BN recalibration and the test pass): what bench/compute.py gives uniform L1, global
    magnitude and random search's pick. Returns (model, steps); ``ledger`` is charged."""
    from autoprune.ship.final import steps_within
    from autoprune.ship.replay import recover as replay_recover

    steps = steps_within(compute, flops, config, len(task.test))
    return replay_recover(pruner, policy, task, config, steps=steps, ledger=ledger)[0], steps


def sensitivity_policy(pruner, task, config, target: int, keep_min: float):
    """What ``--warm-start sensitivity`` enqueues, without a search: the per-group sensitivity
    analysis (cached), the greedy policy that meets the budget by pruning the least sensitive
    groups first, and its keeps then scaled together to spend the budget as a ``fill`` trial
    would (the anchor of the ``local`` and ``blend`` spaces, at width 0 / t = 1)."""
    import dataclasses

    from autoprune.core.budget import Budget, fill_budget
    from autoprune.policy_search.plan import sensitivity_policy as derive

    result, derived = derive(pruner, Budget(flops=target), dataclasses.replace(config, keep_min=keep_min),
                             task.train, task.val)
    if derived is None:
        raise SystemExit(f"no sensitivity-derived policy meets {target} FLOPs")
    keeps = {gid: c.keep for gid, c in derived.groups.items()}
    policy = fill_budget(keeps, "l1", predict=pruner.predict_flops, budget=target, keep_min=keep_min)
    note = "keeps " + " ".join(f"{c.keep:.2f}" for c in policy.groups.values())
    return policy, note, result.get("seconds", 0.0)  # the analysis' own time, also when cached
