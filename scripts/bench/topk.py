#!/usr/bin/env python3
"""Is the search's choice the best it had? Recover the top-K trials of finished searches.

For each study (searches written by ``bench_quality.py``), the K feasible trials with the
highest search-val accuracy (the proxy: BN recalibration + the trial's short fine-tune) are
recovered exactly as ``bench_quality.py`` recovers its contenders (BN recalibration + the same
fine-tune steps, optimizer and seeds) and scored on the TEST split. It prints, per study, the
recovered accuracy of each, the proxy's rank correlation with it among these near-equals, and
how far the proxy's pick (top-1, the bench's row) is from the best of the K: the most that a
better selection among the same trials (e.g. re-scoring the top-K at a higher fidelity) could
gain. With ``--k`` at least the study's size (and ``--seeds 1``), every trial is recovered:
the best of them by test accuracy is an oracle ceiling for what any selection among those
trials could reach.

    python -m scripts.bench.topk --task smallcnn --budget 0.1 \\
        --studies smallcnn-0.1-fill-30-tpe,smallcnn-0.1-fill-30-random --k 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="smallcnn", choices=("smallcnn", "resnet20"))
    p.add_argument("--budget", default="0.1", help="only names the output")
    p.add_argument("--studies", required=True, help="comma-separated study names")
    p.add_argument("--storage", default="sqlite:///results/bench_quality.db")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--recovery-steps", type=int, default=430)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--keep-min", type=float, default=0.125)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prune-stem", action="store_true", help="for studies searched with --prune-stem")
    p.add_argument("--out", default=None, help="default results/bench_topk-<task>-<budget>.json")
    args = p.parse_args(argv)

    import torch
    from scipy.stats import spearmanr

    from autoprune.core.policy import Policy
    from autoprune.policy_search import study as studies
    from scripts.bench.common import (
        load_bench_task,
        recover,
    )

    torch.set_num_threads(args.threads)
    _, _, task, _, _, pruner = load_bench_task(args.task, args.keep_min, threads=args.threads,
                                                 prune_stem=args.prune_stem)

    out = Path(args.out or ROOT / "results" / f"bench_topk-{args.task}-{args.budget}.json")
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.studies.split(","):
        study = studies.load(args.storage, name)
        ranked = studies.ranked_feasible(study)[: args.k]
        done = {r["trial"]: r for r in results.get(name, {}).get("trials", [])}
        rows = []
        for t in ranked:
            if t.number not in done:
                model = pruner.apply(Policy.from_dict(t.user_attrs["policy"]))[0]
                accs = [recover(model, task, seed, args.recovery_steps) for seed in range(args.seeds)]
                done[t.number] = {"trial": t.number, "search_val": t.values[0], "flops": t.values[1], "accs": accs,
                                  "test_acc_mean": statistics.mean(accs)}
                results[name] = {"trials": list(done.values())}
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1))
            rows.append(done[t.number])
        print(report(name, rows, spearmanr))
    return 0


def report(name: str, rows: list[dict], spearmanr) -> str:
    lines = [f"\n{name}: top {len(rows)} trials by search-val, recovered on the test split",
             "| rank | trial | search-val | test acc (mean over seeds) | seeds |", "|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['trial']} | {100 * r['search_val']:.2f} | {100 * r['test_acc_mean']:.2f} | "
                     + " ".join(f"{100 * a:.2f}" for a in r["accs"]) + " |")
    best = max(rows, key=lambda r: r["test_acc_mean"])
    tests = [r["test_acc_mean"] for r in rows]
    rho = spearmanr([r["search_val"] for r in rows], tests).statistic if len(rows) > 2 else float("nan")
    lines.append(f"proxy's pick {100 * rows[0]['test_acc_mean']:.2f}; best of these {100 * best['test_acc_mean']:.2f} "
                 f"(trial {best['trial']}, {100 * (best['test_acc_mean'] - rows[0]['test_acc_mean']):+.2f} pt); "
                 f"spread {100 * (max(tests) - min(tests)):.2f} pt; Spearman rho among them {rho:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
