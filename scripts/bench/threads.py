#!/usr/bin/env python3
"""Torch CPU threads per worker: trial time and its spread, 1 thread against N, side by side.

Runs the same trial (a fixed uniform policy at the budget: prune, BN recalibration, short
fine-tune, evaluation) alternately with each thread count, several rounds, in one process.
Also runs W worker processes at once (as ``autoprune search`` workers sharing one study
would), each with T threads, and reports their aggregate trials per minute.

    python -m scripts.bench.threads --threads 1,2 --rounds 3 --workers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def setup(budget: str):
    from autoprune.core.measure.flops import count_flops
    from autoprune.core.policy import Policy
    from autoprune.core.units import resolve_budget
    from autoprune.task.baseline import get_dense
    from autoprune.task.config import SearchConfig
    from autoprune.task.setup import load_config_task, pruner_of

    config = SearchConfig.from_dict({"model": "smallcnn", "budget_flops": budget})
    task = load_config_task(config)
    example = task.example_input()
    dense = get_dense(config, task).model
    pruner = pruner_of(dense, example, config)
    target = resolve_budget(budget, count_flops(dense, example))
    pruner.predict_flops(Policy({}))  # build the FLOPs predictor outside the timed trials, as a search does
    return task, pruner, target


def one_trial(task, pruner, target: int, steps: int) -> float:
    from autoprune.core.budget import uniform_at_budget
    from autoprune.core.loops import evaluate, recover_model

    t = time.perf_counter()
    policy = uniform_at_budget(pruner, target, keep_min=0.125, exact=False)
    model, _ = pruner.apply(policy)
    recover_model(model, task.train, steps=steps, seed=0)
    evaluate(model, task.val)
    return time.perf_counter() - t


def worker(threads: int, budget: str, steps: int, trials: int, ready, go, done) -> None:
    import torch

    torch.set_num_threads(threads)
    task, pruner, target = setup(budget)
    ready.put(True)
    go.wait()
    t = time.perf_counter()
    for _ in range(trials):
        one_trial(task, pruner, target, steps)
    done.put(time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--budget", default="0.2")
    p.add_argument("--workers", type=int, default=2, help="also time this many concurrent workers (0 = skip)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_threads.json"))
    args = p.parse_args(argv)

    import torch

    counts = [int(t) for t in args.threads.split(",")]
    task, pruner, target = setup(args.budget)
    times: dict[int, list[float]] = {t: [] for t in counts}
    for _ in range(args.rounds):
        for t in counts:
            torch.set_num_threads(t)
            times[t].append(one_trial(task, pruner, target, args.steps))
    result: dict[str, object] = {"steps": args.steps, "budget": args.budget, "single": {}}
    print(f"one process, one trial (smallcnn at {args.budget} of dense FLOPs, {args.steps} fine-tune steps), "
          f"{args.rounds} rounds alternating:")
    print("| threads | median s | min s | max s | spread (max-min)/median |")
    print("|---|---|---|---|---|")
    for t in counts:
        med = statistics.median(times[t])
        result["single"][t] = {"seconds": times[t], "median": med}
        print(f"| {t} | {med:.1f} | {min(times[t]):.1f} | {max(times[t]):.1f} | {(max(times[t]) - min(times[t])) / med:.2f} |")
    if args.workers:
        ctx = mp.get_context("spawn")
        result["workers"] = {}
        print(f"\n{args.workers} concurrent workers, {args.rounds} trials each:")
        print("| threads per worker | wall s | trials per minute (all workers) |")
        print("|---|---|---|")
        for t in counts:
            ready, go, done = ctx.Queue(), ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=worker, args=(t, args.budget, args.steps, args.rounds, ready, go, done))
                     for _ in range(args.workers)]
            for proc in procs:
                proc.start()
            for _ in procs:
                ready.get()  # every worker has loaded its data
            go.set()
            start = time.perf_counter()
            spans = [done.get() for _ in procs]
            wall = time.perf_counter() - start
            for proc in procs:
                proc.join()
            rate = 60 * args.workers * args.rounds / wall
            result["workers"][t] = {"wall": wall, "per_worker": spans, "trials_per_min": rate}
            print(f"| {t} | {wall:.1f} | {rate:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
