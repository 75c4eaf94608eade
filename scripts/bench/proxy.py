#!/usr/bin/env python3
"""How well does a trial's cheap score predict the fully recovered accuracy, and how much
does the policy matter at all?

Samples K random policies at a FLOPs budget (``--space fill``: random relative widths scaled
to spend the budget, as the search samples them; ``levels``: random keep levels that fit),
all L1. For each: search-val accuracy after BN recalibration alone and after short
fine-tunes of several lengths (each its own cosine schedule, as in a trial), then the TEST
accuracy after the full recovery with several seeds. Prints the Spearman rank correlation of
each proxy with the recovered accuracy (mean over seeds) and its cost, and compares the
spread of recovered accuracy *between* policies with the seed-to-seed noise *within* one:
where the first is not much larger, no search over policies can beat uniform by much.

    python -m scripts.bench.proxy --budget 0.1 --policies 12 --steps 0,50,150,300 --recovery 430 --seeds 2

``--refit-steps 0,50`` adds proxies that first refit the pruned layers to the dense outputs
(``--reconstruct``), then fine-tune that many steps. ``--known results/bench_quality.json``
adds that benchmark's b, d and e policies at the same budget, with the recovered accuracies
it stored (the recovery is deterministic, so seed s there is seed s here).

    python -m scripts.bench.proxy --model resnet20 --budget 0.15 --policies 4 --steps 0,150 \
        --refit-steps 0,50 --seeds 1 --known results/bench_quality.json
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--budget", default="0.1")
    p.add_argument("--space", default="fill", choices=("fill", "levels"))
    p.add_argument("--policies", type=int, default=12)
    p.add_argument("--steps", default="0,50,150,300")
    p.add_argument("--refit-steps", default="", help="comma-separated fine-tune steps after a refit (proxies)")
    p.add_argument("--known", default=None, help="a bench_quality.json whose b, d, e policies at --budget join")
    p.add_argument("--recovery", type=int, default=430)
    p.add_argument("--seeds", type=int, default=2, help="recovery seeds per policy (>= 2 to see the noise)")
    p.add_argument("--keep-min", type=float, default=0.125)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="default results/bench_proxy-<model>-<budget>.json")
    args = p.parse_args(argv)

    import torch
    from scipy.stats import spearmanr

    from autoprune.core.budget import fill_budget
    from autoprune.core.compute import Ledger, dense_epoch_flops
    from autoprune.core.loops import evaluate, finetune, recalibrate_bn
    from autoprune.core.measure.flops import count_flops
    from autoprune.core.policy import GroupChoice, Policy
    from autoprune.core.reconstruct import dense_targets, reconstruct
    from autoprune.core.units import resolve_budget
    from autoprune.policy_search.space import WIDTH_RANGE, width
    from scripts.bench.common import (
        load_bench_task,
        recover,
        uniform_policy,
    )

    torch.set_num_threads(args.threads)
    # the benchmark's dense model and pruner (with its calibration images, for the known
    # policies' taylor / activation groups)
    _, config, task, dense, _, pruner = load_bench_task(args.model, args.keep_min, threads=args.threads)
    example = pruner.example_input
    target = resolve_budget(args.budget, count_flops(dense, example))
    epoch = dense_epoch_flops(count_flops(dense, example), len(task.train))  # the unit of compute
    rng = random.Random(args.seed)
    policies = []
    while len(policies) < args.policies:
        if args.space == "fill":
            widths = {g.id: width(rng.randint(-WIDTH_RANGE, WIDTH_RANGE)) for g in pruner.groups}
            policy = fill_budget(widths, "l1", budget=target, keep_min=args.keep_min,
                                 predict=pruner.predict_flops)
        else:
            policy = Policy({g.id: GroupChoice("l1", rng.choice(config.keep_levels)) for g in pruner.groups})
        if count_flops(pruner.apply(policy)[0], example) <= target:
            policies.append(policy)
    known: list[tuple[str, Policy, list[float]]] = []
    if args.known:
        for r in json.loads(Path(args.known).read_text())[args.model][args.budget]["rows"]:
            tag = r["contender"][:2]
            if tag == "b)":  # solved again exactly as the bench solved it (its note rounds the ratio)
                known.append((tag, uniform_policy(pruner, target)[0], r["accs"]))
            elif tag in ("d)", "e)") and "policy" in r:
                known.append((tag, Policy.from_dict(r["policy"]), r["accs"]))
    steps = [int(s) for s in args.steps.split(",")]
    refit_steps = [int(s) for s in args.refit_steps.split(",") if s]
    proxies = [(f"val_after_{s}", s, False) for s in steps] + [(f"val_refit_{s}", s, True) for s in refit_steps]
    cost = {name: 0.0 for name, _, _ in proxies}
    spent = {name: 0.0 for name, _, _ in proxies}  # dense epochs (autoprune.core.compute)
    targets = None
    if refit_steps:
        gen = torch.Generator().manual_seed(1)
        targets = dense_targets(dense, task.train.x[torch.randperm(len(task.train), generator=gen)[:1024]])
    rows = []
    todo = [("random", p, None) for p in policies] + known
    for i, (source, policy, stored) in enumerate(todo):
        base, resolved = pruner.apply(policy)
        row = {"source": source, "channels": resolved.channels(), "flops": count_flops(base, example)}
        for name, s, refit in proxies:
            t = time.perf_counter()
            m = copy.deepcopy(base)
            with Ledger().watching(m, row["flops"]) as ledger:
                if refit:
                    reconstruct(m, targets, pruner.kept_outputs(resolved))
                recalibrate_bn(m, task.train, num_batches=20, seed=0)
                finetune(m, task.train, steps=s, seed=0)
                row[name] = evaluate(m, task.val)
            cost[name] += time.perf_counter() - t
            spent[name] += ledger.total / epoch
        accs = list(stored[: args.seeds]) if stored else []
        row["recovery_dense_epochs"] = []
        for seed in range(len(accs), args.seeds):
            ledger = Ledger()
            accs.append(recover(base, task, seed, args.recovery, ledger))  # exactly as bench_quality recovers contenders
            row["recovery_dense_epochs"].append(ledger.total / epoch)
        row["test_recovered"] = accs
        row["test_recovered_mean"] = statistics.mean(accs)
        rows.append(row)
        print(f"policy {i + 1}/{len(todo)} ({source}) {row['channels']} {row['flops']:,} FLOPs: "
              + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val"))
              + ", test recovered " + " ".join(f"{a:.4f}" for a in accs), file=sys.stderr, flush=True)
    final = [r["test_recovered_mean"] for r in rows]
    print(f"\n{args.model}, budget {args.budget} ({target:,} FLOPs), {len(policies)} random '{args.space}' policies; "
          f"recovery {args.recovery} steps x {args.seeds} seeds; {args.threads} thread(s)"
          + (f", plus the benchmark's {', '.join(k[0] for k in known)}" if known else "") + "\n")
    print("| proxy (search-val) | Spearman rho vs recovered test acc | seconds per policy | dense epochs per policy |")
    print("|---|---|---|---|")
    summary: dict[str, object] = {}
    for name, s, refit in proxies:
        rho = spearmanr([r[name] for r in rows], final).statistic
        key = f"refit+{s}" if refit else str(s)
        summary[key] = {"rho": rho, "seconds": cost[name] / len(rows), "dense_epochs": spent[name] / len(rows)}
        label = "BN recalibration only" if s == 0 else f"{s} fine-tune steps"
        if refit:
            label = "refit + " + label
        print(f"| {label} | {rho:.3f} | {cost[name] / len(rows):.1f} | {spent[name] / len(rows):.4f} |")
    between = statistics.stdev(final)
    within = statistics.mean(statistics.stdev(r["test_recovered"]) for r in rows) if args.seeds > 1 else float("nan")
    summary["spread"] = {"between_policies_std": between, "within_policy_seed_std": within,
                         "best": max(final), "worst": min(final), "median": statistics.median(final)}
    print(f"\nrecovered test accuracy over policies: best {100 * max(final):.2f}, median "
          f"{100 * statistics.median(final):.2f}, worst {100 * min(final):.2f}; std between policies "
          f"{100 * between:.2f} pt, seed std within a policy {100 * within:.2f} pt")
    out = Path(args.out or ROOT / "results" / f"bench_proxy-{args.model}-{args.budget}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "budget": args.budget, "space": args.space,
                               "recovery": args.recovery, "seeds": args.seeds, "summary": summary, "rows": rows},
                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
