#!/usr/bin/env python3
"""Equal total compute: does autoprune ship a model at least as accurate as uniform or global
pruning given the same compute?

One cell is a task, a FLOPs budget and a total compute E in dense epochs (one pass of the train
split through the dense model, forward and backward; core/compute.py). Every contender starts
from the same dense checkpoint and recovers with the same recipe (``apply``'s: BN
recalibration, SGD lr 0.01 cosine, batch 128, no distillation):

- ``uniform``: uniform L1 at the budget, all of E as recovery;
- ``global``: Torch-Pruning's global magnitude at the budget, all of E as recovery;
- ``random``: ``autoprune search --compute E --sampler random``'s trials, the best by their
  cheap score recovered with what the search left (no final round; searched however few
  trials its share pays for, where autoprune would not search);
- ``autoprune``: ``autoprune search --compute E`` as shipped (search, final round, recovery);
- ``dense``: the dense model trained E more dense epochs, the ceiling.

Each seed is a whole run (sampler, data order). Prints each cell's table and wall time and
writes the cells as JSON (accuracy in percent on the TEST split, compute in dense epochs).
Run cells as 1-thread processes two at a time, each with its own ``--out``, then merge:

    python -m scripts.bench.compute --budgets 0.2 --compute 1,2 --out /tmp/c-0.2.json
    python -m scripts.bench.compute --budgets 0.1 --compute 1,2 --keep-min 0.125 --out /tmp/c-0.1.json
    python -m scripts.bench.compute --merge /tmp/c-0.2.json /tmp/c-0.1.json --out results/bench_compute.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scripts.bench.common import ROOT

CONTENDERS = ("uniform", "global", "random", "autoprune", "dense")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--budgets", default="0.2", help="comma-separated fractions of dense FLOPs")
    p.add_argument("--compute", default="1,2", help="comma-separated totals E, in dense epochs")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST .. FIRST + SEEDS - 1 (to run a cell's "
                   "seeds as parallel processes, then --merge them)")
    p.add_argument("--dense-epochs", type=int, default=10, help="the dense checkpoint's epochs (bench/dense.py)")
    p.add_argument("--checkpoint", default=None, help="one dense checkpoint for every seed (default: each seed's "
                   "own dense model, trained and cached with that seed)")
    p.add_argument("--keep-min", type=float, default=None, help="passed to the search (as its advice says)")
    p.add_argument("--prune-stem", action="store_true", help="every contender may prune the stem (ResNet-20 at 0.1 "
                   "needs it, as the search's advice says)")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--split", default=None, help="SEARCH,FINAL: shares of E for autoprune's search and final round "
                   "instead of the shipped default (policy_search/plan.py COMPUTE_SPLIT), to measure the split")
    p.add_argument("--finalists", type=int, default=None, help="searched policies in autoprune's final round instead "
                   "of the shipped default (ship/final.py FINALISTS), to measure the round")
    p.add_argument("--merge", nargs="+", default=None, help="cell files to merge into --out (a cell measured in "
                   "several files gets the contenders of all, a later file's winning)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_compute.json"))
    args = p.parse_args(argv)
    if args.merge:
        merged: dict[tuple, dict] = {}  # (task, budget, E): the cell; seconds add up the processes' wall time
        for f in args.merge:
            for c in json.loads(Path(f).read_text())["cells"]:
                c.pop("split", None)  # written by older runs: autoprune's contender now carries its own
                key = (c["task"], c["budget"], c["compute"])
                if key not in merged:
                    merged[key] = c
                    continue
                have = merged[key]["contenders"]
                for name, v in c["contenders"].items():
                    old = have.get(name)
                    same = old is not None and ({k: old.get(k) for k in ("split", "finalists")}
                                                == {k: v.get(k) for k in ("split", "finalists")})
                    seeds = [{r.get("seed") for r in x["runs"]} for x in (old, v)] if same else [{None}]
                    if None not in set.union(*seeds) and not set.intersection(*seeds):
                        have[name] = {**v, **summary(old["runs"] + v["runs"])}  # other seeds of the same contender
                    else:
                        have[name] = v  # a later file's contender wins
                merged[key]["seconds"] = merged[key].get("seconds", 0) + c.get("seconds", 0)
        cells = list(merged.values())
        Path(args.out).write_text(json.dumps({"cells": cells, "units": UNITS}, indent=1))
        print(f"{len(cells)} cells -> {args.out}")
        return 0

    import torch

    from autoprune.policy_search.plan import COMPUTE_SPLIT

    torch.set_num_threads(args.threads)
    import autoprune.ship.final as final_module

    if args.finalists is not None:
        final_module.FINALISTS = args.finalists
    if args.split:  # in place: the search and the final round read this dict
        COMPUTE_SPLIT.update(zip(("search", "final"), (float(x) for x in args.split.split(","))))
    cells = []
    for budget in args.budgets.split(","):
        for e in (float(x) for x in args.compute.split(",")):
            t0 = time.perf_counter()
            cell = {"task": args.model, "budget": float(budget), "compute": e, "dense_epochs": args.dense_epochs,
                    "dense": args.checkpoint or "each seed's own", "contenders": {}}
            runs: dict[str, list[dict]] = {}
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for name in args.contenders.split(","):
                    t = time.perf_counter()
                    row = run(name, args.model, budget, e, seed, args)
                    row["seconds"] = round(time.perf_counter() - t, 1)
                    row["seed"] = seed
                    runs.setdefault(name, []).append(row)
                    print(f"{args.model} {budget} E={e:g} seed {seed} {name}: test {row['accuracy']:.2f}% "
                          f"search {row['search_compute']:.3f} + recovery {row['recovery_compute']:.3f} dense epochs"
                          f"{' (' + row['pick'] + ')' if row.get('pick') else ''} [{row['seconds']} s]", flush=True)
                    for n, rows in runs.items():  # written after every run: a stopped bench keeps what it measured
                        cell["contenders"][n] = summary(rows)
                        if n == "autoprune":  # what it ran with (a merged cell may hold baselines from another run)
                            cell["contenders"][n]["split"] = dict(COMPUTE_SPLIT)
                            cell["contenders"][n]["finalists"] = final_module.FINALISTS
                    cell["seconds"] = round(time.perf_counter() - t0, 1)
                    Path(args.out).write_text(json.dumps({"cells": [*cells, cell], "units": UNITS}, indent=1))
            cells.append(cell)
            print(table(cell), flush=True)
    return 0


def summary(rows: list[dict]) -> dict:
    """A contender's runs (one per seed) as mean, std, n, mean compute, the largest FLOPs (all
    within the budget), mean params and median latency."""
    accs = [r["accuracy"] for r in rows]
    return {"mean": round(statistics.mean(accs), 3), "std": round(statistics.stdev(accs), 3) if len(accs) > 1 else 0.0,
            "n": len(accs), "search_compute": round(statistics.mean(r["search_compute"] for r in rows), 4),
            "recovery_compute": round(statistics.mean(r["recovery_compute"] for r in rows), 4),
            "flops": max(r["flops"] for r in rows), "params": round(statistics.mean(r["params"] for r in rows)),
            "latency_ms": round(statistics.median(r["latency_ms"] for r in rows), 3),
            "runs": sorted(rows, key=lambda r: r.get("seed", 0))}


UNITS = {"accuracy": "top-1 on the TEST split, percent", "compute": "dense epochs (3 x dense FLOPs x train images)",
         "latency_ms": "PyTorch, CPU, 1 thread, batch 64, median"}


def table(cell: dict) -> str:
    lines = [(f"\n{cell['task']} at {cell['budget']} of dense FLOPs, E = {cell['compute']:g} dense epochs "
              f"({cell['seconds']:.0f} s)"),
             "| contender | test acc (mean ± std, n) | FLOPs | params | latency ms | search + recovery compute |",
             "|---|---|---|---|---|---|"]
    for name, c in cell["contenders"].items():
        lines.append(f"| {name} | {c['mean']:.2f} ± {c['std']:.2f} ({c['n']}) | {c['flops']:,} | {c['params']:,} | "
                     f"{c['latency_ms']:.2f} | {c['search_compute']:.3f} + {c['recovery_compute']:.3f} |")
    return "\n".join(lines)


def config_for(model: str, budget: str, e: float, seed: int, args: argparse.Namespace, tmp: str, **extra):
    from autoprune.task.config import SearchConfig

    values = {"model": model, "dataset": "fashion-mnist", "budget_flops": budget, "compute": e, "seed": seed,
              "dense_epochs": args.dense_epochs, "cache_dir": str(ROOT / "studies" / "checkpoints"),
              "storage": f"sqlite:///{tmp}/s.db", "threads": args.threads, **extra}
    if args.keep_min is not None:
        values["keep_min"] = args.keep_min
    if args.prune_stem:
        values["prune_stem"] = True
    if args.checkpoint is not None:
        values["checkpoint"] = args.checkpoint
    return SearchConfig.from_dict(values)


def measure(model, example) -> dict:
    from autoprune.core.measure.flops import count_flops, count_params, latency_ms

    model = model.cpu().eval()
    return {"flops": count_flops(model, example), "params": count_params(model),
            "latency_ms": round(latency_ms(model, example.expand(64, *example.shape[1:]).contiguous()), 3)}


def run(name: str, model: str, budget: str, e: float, seed: int, args: argparse.Namespace) -> dict:
    from autoprune.core.budget import global_magnitude_policy, uniform_at_budget
    from autoprune.core.compute import Ledger, dense_epoch_flops
    from autoprune.core.loops import evaluate, recover_model
    from autoprune.core.measure.flops import count_flops
    from autoprune.core.units import resolve_budget
    from autoprune.policy_search import study as studies
    from autoprune.policy_search.run import run_search
    from autoprune.ship.final import ship, steps_within
    from autoprune.task.baseline import get_dense
    from autoprune.task.setup import calibration_of, load_config_task, pruner_of
    from scripts.bench.common import recover_within

    with tempfile.TemporaryDirectory() as tmp:
        if name == "autoprune":
            config = config_for(model, budget, e, seed, args, tmp)
            study, _ = run_search(config, progress=False)
            report = ship(study, Path(tmp) / "out", progress=False, onnx=False)
            c = report["compute"]
            final = study.user_attrs["final"]
            return {"accuracy": 100 * report["pruned"]["test_accuracy"], "pick": final["pick"],
                    "final_round": [{k: r[k] for k in ("name", "val_accuracy", "steps", "flops", "search_score")}
                                    for r in final["candidates"]],
                    "trials": len(study.trials), "search_ran": study.user_attrs["search_compute"]["runs"],
                    "search_compute": c["search"]["dense_epochs"]["total"], "recovery_compute": c["apply"]["dense_epochs"],
                    "flops": report["pruned"]["flops"], "params": report["pruned"]["params"],
                    "latency_ms": report["pruned"]["latency_ms"]}
        config = config_for(model, budget, e, seed, args, tmp,
                            **({"sampler": "random", "warm_start": []} if name == "random" else {}))
        task = load_config_task(config)
        dense = get_dense(config, task, progress=False).model
        example = task.example_input()
        dense_flops = count_flops(dense, example)
        epoch = dense_epoch_flops(dense_flops, len(task.train))
        spent = 0.0
        if name == "dense":
            m = copy.deepcopy(dense)
            with Ledger().watching(m, dense_flops) as ledger:
                recover_model(m, task.train, steps=steps_within(e * epoch, dense_flops, config, len(task.test)),
                              seed=seed,
                              bn_batches=config.bn_batches, batch_size=config.batch_size, lr=config.finetune_lr)
                acc = evaluate(m, task.test)
            return {"accuracy": 100 * acc, "search_compute": 0.0, "recovery_compute": ledger.total / epoch,
                    **measure(m, example)}
        if name == "random":
            import autoprune.policy_search.plan as plan_module

            least = plan_module.MIN_SEARCH_TRIALS
            plan_module.MIN_SEARCH_TRIALS = 1  # the contender searches whatever its share pays for
            try:
                study, _ = run_search(config, progress=False)
            finally:
                plan_module.MIN_SEARCH_TRIALS = least
            best = studies.best_feasible(study)
            from autoprune.core.policy import Policy

            policy = Policy.from_dict(best.user_attrs["policy"])
            spent = studies.trials_compute(study) / epoch
        pruner = pruner_of(dense, example, config, calibration=calibration_of(config, task.plain_train))
        target = resolve_budget(budget, dense_flops)
        if name == "uniform":
            policy = uniform_at_budget(pruner, target, "l1")
        elif name == "global":
            policy = global_magnitude_policy(pruner, target)
        flops = count_flops(pruner.apply(policy)[0], example)
        ledger = Ledger()
        try:
            m, steps = recover_within(pruner, policy, flops, task, config, (e - spent) * epoch, ledger)
            acc = evaluate(m, task.test)
        finally:
            ledger.close()
        return {"accuracy": 100 * acc, "search_compute": spent, "recovery_compute": ledger.total / epoch,
                "steps": steps, **measure(m, example)}


if __name__ == "__main__":
    sys.exit(main())
