#!/usr/bin/env python3
"""Benchmark: does the search beat uniform pruning at the same FLOPs?

On Fashion-MNIST (SmallCNN) at a FLOPs budget, run an N-trial search (or top up an existing
bench study), take its best feasible policy, and compare it on the TEST split with uniform L1
pruning solved to the same FLOPs. Both start from the same dense checkpoint and get the same
recovery (BN recalibration + the same fine-tune steps, optimizer and seed).

    python scripts/bench_search.py --trials 30 --finetune-steps 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-flops", default="0.5")
    p.add_argument("--trials", type=int, default=30, help="fine-tuned trials the bench study should hold")
    p.add_argument("--search-steps", type=int, default=150, help="fine-tune steps per trial during the search")
    p.add_argument("--finetune-steps", type=int, default=1000, help="recovery steps for every contender")
    p.add_argument("--storage", default="sqlite:///results/bench_search.db")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_search.json"))
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)

    import torch

    from autoprune import study as studies
    from autoprune.config import SearchConfig, human
    from autoprune.budget import uniform_at_budget
    from autoprune.export import summary
    from autoprune.replay import prepare, recover
    from autoprune.pipeline import run_search

    if args.threads:
        torch.set_num_threads(args.threads)
    config = SearchConfig.from_dict({
        "budget_flops": args.budget_flops, "trials": args.trials, "finetune_steps": args.search_steps,
        "storage": args.storage, "study": f"bench-fmnist-{args.budget_flops}", "threads": args.threads,
    })
    storage = studies.open_storage(config.storage_url)
    have = 0
    if config.study_name in [s.study_name for s in storage.get_all_studies()]:
        have = len(studies.completed(studies.load(config.storage_url, config.study_name)))
    t0 = time.perf_counter()
    if have < args.trials:
        config.trials = args.trials - have
        run_search(config, progress=True)
    search_s = time.perf_counter() - t0
    study = studies.load(config.storage_url, config.study_name)
    best = studies.best_feasible(study)
    if best is None:
        raise SystemExit(f"study {config.study_name!r} has no feasible trial to compare")

    cfg, task, dense, pruner = prepare(studies.info(study), study_name=study.study_name)
    example = task.example_input()
    from autoprune.policy import Policy

    rows = [("dense", summary(dense, task, example), "")]
    model, _ = recover(pruner, Policy.from_dict(best.user_attrs["policy"]), task, cfg, steps=args.finetune_steps,
                       progress=True, desc="autoprune best")
    rows.append((f"autoprune best (trial {best.number})", summary(model, task, example), ""))
    uniform = uniform_at_budget(pruner, int(best.values[1]), keep_min=0.01)
    keep = next(iter(uniform.groups.values())).keep
    model, _ = recover(pruner, uniform, task, cfg, steps=args.finetune_steps, progress=True, desc="uniform l1")
    rows.append((f"uniform L1 (keep {keep:.3f})", summary(model, task, example), ""))

    trials = studies.completed(study)
    phases = ["prune", "measure", "calibrate", "finetune", "evaluate"]
    breakdown = {ph: statistics.mean(t.user_attrs["seconds"].get(ph, 0.0) for t in trials) for ph in phases}
    total = statistics.mean(t.user_attrs["seconds"]["total"] for t in trials)
    d = rows[0][1]
    print(f"\nFashion-MNIST, SmallCNN, budget {args.budget_flops} of dense FLOPs; {len(trials)} fine-tuned trials "
          f"({args.search_steps} steps each); every contender recovered with {args.finetune_steps} steps; "
          f"{torch.get_num_threads()} threads\n")
    print("| contender | test acc | FLOPs | of dense | params |")
    print("|---|---|---|---|---|")
    for name, s, _ in rows:
        print(f"| {name} | {100 * s['test_accuracy']:.2f}% | {human(s['flops'])} | {s['flops'] / d['flops']:.3f} | {human(s['params'])} |")
    print("\nmean seconds per trial: " + ", ".join(f"{ph} {breakdown[ph]:.2f}" for ph in phases)
          + f", total {total:.2f} (outside fine-tune+evaluate: {100 * (breakdown['prune'] + breakdown['measure'] + breakdown['calibrate']) / total:.1f}%)")
    print(f"search wall time this run: {search_s:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "budget_flops": args.budget_flops, "trials": len(trials), "search_steps": args.search_steps,
        "finetune_steps": args.finetune_steps, "threads": torch.get_num_threads(),
        "rows": [{"contender": n, **s} for n, s, _ in rows],
        "trial_seconds": {**breakdown, "total": total},
    }, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
