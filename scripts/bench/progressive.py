#!/usr/bin/env python3
"""Benchmark: pruning in k steps (fine-tuning between them) against pruning at once.

The same policy (uniform L1 at the budget, or the sensitivity-derived one), the same dense
checkpoint, the same total fine-tune steps (``--steps``, split evenly over the k rounds) and
seeds; test accuracy, mean and std over ``--seeds``. This is ``autoprune apply --steps k``.

    python -m scripts.bench.progressive --task smallcnn --budget 0.1 --k 1,3 --seeds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="smallcnn", choices=("smallcnn", "resnet20"))
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--policy", default="uniform", choices=("uniform", "sensitivity"))
    p.add_argument("--k", default="1,3")
    p.add_argument("--steps", type=int, default=430)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--keep-min", type=float, default=0.125)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "bench_progressive.json"))
    args = p.parse_args(argv)

    import torch

    from autoprune.core.budget import uniform_at_budget
    from autoprune.core.loops import evaluate
    from autoprune.core.measure.flops import count_flops
    from autoprune.ship.replay import recover
    from scripts.bench.common import load_bench_task, sensitivity_policy

    torch.set_num_threads(args.threads)
    _, config, task, dense, _, pruner = load_bench_task(args.task, args.keep_min, threads=args.threads, prune_stem=True)
    target = int(args.budget * count_flops(dense, pruner.example_input))
    if args.policy == "uniform":
        policy = uniform_at_budget(pruner, target)
    else:
        policy = sensitivity_policy(pruner, task, config, target, args.keep_min)[0]
    rows = {}
    for k in (int(x) for x in args.k.split(",")):
        accs, seconds = [], []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            model, _ = recover(pruner, policy, task, dataclasses.replace(config, seed=seed), steps=args.steps,
                               prune_steps=k)
            accs.append(evaluate(model, task.test))
            seconds.append(time.perf_counter() - t0)
        flops = count_flops(model.cpu(), pruner.example_input)
        rows[k] = {"accs": accs, "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                   "flops": flops, "seconds": statistics.mean(seconds)}
        print(f"k={k}: test {100 * rows[k]['mean']:.2f} ± {100 * rows[k]['std']:.2f} ({', '.join(f'{100 * a:.2f}' for a in accs)}), "
              f"{flops:,} FLOPs, {rows[k]['seconds']:.0f} s per run", flush=True)
    Path(args.out).write_text(json.dumps({"command": "python -m scripts.bench.progressive " + " ".join(argv or sys.argv[1:]),
                                          "task": args.task, "budget": args.budget, "policy": args.policy,
                                          "steps": args.steps, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
