#!/usr/bin/env python3
"""Benchmark: ``--space front`` (a curve in one search) against ``--space fill`` (all at the budget).

The same task, dense checkpoint, budget, sampler seed and number of trials for both; then:

* the front's hypervolume (reference point: accuracy 0 at the budget) next to those of the
  reference curves (uniform L1, global magnitude, with the trials' fine-tune);
* the best feasible trial at the budget (FLOPs within ``--at-budget`` of it), recovered as
  every benchmark contender is (BN recalibration + ``--recovery-steps``, seeds 0..n-1) and
  scored on the TEST split: the front must not lose the budget's best point.

    python -m scripts.bench.front --budget 0.5 --trials 25
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="smallcnn", choices=("smallcnn", "resnet20"))
    p.add_argument("--budget", default="0.5")
    p.add_argument("--trials", type=int, default=25)
    p.add_argument("--spaces", default="fill,front")
    p.add_argument("--at-budget", type=float, default=0.9, help="a trial with at least this share of the budget counts as at it")
    p.add_argument("--recovery-steps", type=int, default=430)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--storage", default="sqlite:///results/bench_front.db")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_front.json"))
    args = p.parse_args(argv)

    import torch

    from autoprune.core.policy import Policy
    from autoprune.policy_search import front as report
    from autoprune.policy_search import study as studies
    from autoprune.policy_search.run import run_search
    from autoprune.task.config import SearchConfig
    from scripts.bench.common import load_bench_task, recover

    torch.set_num_threads(args.threads)
    base, _, task, _, _, pruner = load_bench_task(args.task, 0.25, threads=args.threads)
    rows = {}
    for space in args.spaces.split(","):
        name = f"{args.task}-{args.budget}-{space}-{args.trials}"
        config = SearchConfig.from_dict({**base, "keep_min": 0.25, "space": space, "budget_flops": args.budget,
                                         "trials": args.trials, "storage": args.storage, "study": name})
        t0 = time.perf_counter()
        done = 0
        if name in [s.study_name for s in studies.open_storage(args.storage).get_all_studies()]:
            done = len(studies.completed(studies.load(args.storage, name)))
        if done < args.trials:
            config.trials = args.trials - done
            run_search(config, progress=False)
        study = studies.load(args.storage, name)
        budget = studies.info(study)["budget"]["flops"]
        at_budget = [t for t in studies.ranked_feasible(study) if t.values[1] >= args.at_budget * budget]
        best = at_budget[0]
        model, _ = pruner.apply(Policy.from_dict(best.user_attrs["policy"]))
        accs = [recover(model, task, seed, args.recovery_steps) for seed in range(args.seeds)]
        flops = [t.values[1] / budget for t in studies.completed(study)]
        rows[space] = {
            "study": name, "seconds": round(time.perf_counter() - t0), "hypervolume": report.hypervolumes(study),
            "trials_at_budget": len(at_budget), "flops_of_budget": {"min": min(flops), "max": max(flops)},
            "best_at_budget": {"trial": best.number, "search_val": best.values[0], "flops": best.values[1],
                               "test_accs": accs, "test_mean": statistics.mean(accs),
                               "test_std": statistics.stdev(accs) if len(accs) > 1 else 0.0},
        }
        hv = rows[space]["hypervolume"]
        print(f"{space}: hypervolume {hv['front']:.4f} (" + ", ".join(f"{k} {v:.4f}" for k, v in hv.items()
                                                              if k not in ("front", "reference_point")) +
              f"); {len(at_budget)} trials at the budget, FLOPs {min(flops):.2f}-{max(flops):.2f} of it; best at the "
              f"budget: trial {best.number}, search-val {best.values[0]:.4f}, test {100 * statistics.mean(accs):.2f} ± "
              f"{100 * rows[space]['best_at_budget']['test_std']:.2f}", flush=True)
    Path(args.out).write_text(json.dumps({"command": "python -m scripts.bench.front " + " ".join(argv or sys.argv[1:]),
                                          "task": args.task, "budget": args.budget, "trials": args.trials,
                                          "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
