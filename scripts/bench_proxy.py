#!/usr/bin/env python3
"""How well does a trial's cheap score predict the fully recovered accuracy?

Samples K random feasible policies at a FLOPs budget and, for each, scores search-val
accuracy after BN recalibration alone and after short fine-tunes of several lengths (each its
own cosine schedule, as in a trial), then the TEST accuracy after the full recovery. Prints the
Spearman rank correlation of each proxy with the recovered accuracy, and its cost.

    python scripts/bench_proxy.py --budget 0.2 --policies 16 --steps 0,50,150,300 --recovery 430
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--budget", default="0.2")
    p.add_argument("--policies", type=int, default=16)
    p.add_argument("--steps", default="0,50,150,300")
    p.add_argument("--recovery", type=int, default=430)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench_proxy.json"))
    args = p.parse_args(argv)

    import torch
    from scipy.stats import spearmanr

    from autoprune.baseline import get_dense
    from autoprune.config import SearchConfig, resolve_budget
    from autoprune.groups import resolve_ignore
    from autoprune.measure import count_flops
    from autoprune.pipeline import load_config_task
    from autoprune.policy import GroupChoice, Policy
    from autoprune.prune import Pruner
    from autoprune.train import evaluate, finetune, recalibrate_bn

    torch.set_num_threads(2)
    config = SearchConfig.from_dict({"model": args.model, "budget_flops": args.budget})
    task = load_config_task(config)
    example = task.example_input()
    dense = get_dense(config, task).model
    pruner = Pruner(dense, example, ignored=resolve_ignore(dense, []), min_channels=config.min_channels)
    target = resolve_budget(args.budget, count_flops(dense, example))
    rng = random.Random(args.seed)
    policies = []
    while len(policies) < args.policies:  # random feasible policies, L1, on the search grid
        policy = Policy({g.id: GroupChoice("l1", rng.choice(config.keep_levels)) for g in pruner.groups})
        if count_flops(pruner.apply(policy)[0], example) <= target:
            policies.append(policy)
    steps = [int(s) for s in args.steps.split(",")]
    rows, cost = [], {s: 0.0 for s in steps}
    for i, policy in enumerate(policies):
        base, _ = pruner.apply(policy)
        row = {"policy": {gid: g.keep for gid, g in policy.groups.items()}, "flops": count_flops(base, example)}
        for s in steps:
            t = time.perf_counter()
            m = copy.deepcopy(base)
            recalibrate_bn(m, task.train_x, num_batches=20, seed=0)
            finetune(m, task.train_x, task.train_y, steps=s, seed=0)
            row[f"val_after_{s}"] = evaluate(m, task.val_x, task.val_y)
            cost[s] += time.perf_counter() - t
        m = copy.deepcopy(base)
        recalibrate_bn(m, task.train_x, num_batches=20, seed=0)
        finetune(m, task.train_x, task.train_y, steps=args.recovery, seed=0)
        row["test_recovered"] = evaluate(m, task.test_x, task.test_y)
        rows.append(row)
        print(f"policy {i + 1}/{len(policies)}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("val", "test"))),
              file=sys.stderr)
    final = [r["test_recovered"] for r in rows]
    print(f"\n{args.model}, budget {args.budget}, {len(rows)} random feasible policies; recovery {args.recovery} steps\n")
    print("| proxy (search-val) | Spearman rho vs recovered test acc | seconds per policy |")
    print("|---|---|---|")
    summary = {}
    for s in steps:
        rho = spearmanr([r[f"val_after_{s}"] for r in rows], final).statistic
        summary[s] = {"rho": rho, "seconds": cost[s] / len(rows)}
        label = "BN recalibration only" if s == 0 else f"{s} fine-tune steps"
        print(f"| {label} | {rho:.3f} | {cost[s] / len(rows):.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "budget": args.budget, "recovery": args.recovery,
                               "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
