#!/usr/bin/env python3
"""Are there better policies outside what the searches tried? Two probes, recovered exactly
as ``bench_quality.py`` recovers its contenders (BN recalibration + 430 SGD steps, seeds) and
scored on the TEST split, with the stem prunable.

* ``--blend 0.25,0.5,0.75``: policies between uniform L1 (t=0) and the sensitivity-derived
  policy (e) (t=1): per group keep = uniform^(1-t) * e^t, then all keeps scaled together to
  spend the budget (as a ``fill`` trial is). The best ResNet-20 picks of the ``local`` space
  lay between the two.
* ``--drop-blocks "2,5,8;1,2,4,5"`` (ResNet-20 only): remove whole residual blocks (indices
  into ``model.layers``; only blocks with an identity shortcut), then prune the rest
  uniformly (L1) to the same FLOPs. An empty entry is plain uniform, the reference.

    python scripts/probe_allocations.py --task resnet20 --budget 0.1 --drop-blocks ";2,5,8;1,2,4,5;1,2,4,5,7,8"
    python scripts/probe_allocations.py --task resnet20 --budget 0.1 --blend 0.25,0.5,0.75
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="resnet20", choices=("smallcnn", "resnet20"))
    p.add_argument("--budget", type=float, default=0.1, help="fraction of dense FLOPs")
    p.add_argument("--blend", default="", help="comma-separated t in [0, 1]")
    p.add_argument("--drop-blocks", default="", help="';'-separated lists of block indices")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--recovery-steps", type=int, default=430)
    p.add_argument("--keep-min", type=float, default=0.125)
    p.add_argument("--out", default=None, help="default results/probe_allocations-<task>-<budget>.json")
    args = p.parse_args(argv)

    import torch
    from bench_quality import (
        load_bench_task,
        recover,
        sensitivity_policy,
        uniform_policy,
    )
    from torch import nn

    from autoprune.measure import count_flops
    from autoprune.budget import blend_widths, fill_budget
    from autoprune.task import pruner_of

    torch.set_num_threads(1)
    _, config, task, dense, _, pruner = load_bench_task(args.task, args.keep_min, prune_stem=True)
    example = task.example_input()
    target = int(args.budget * count_flops(dense, example))
    out = Path(args.out or ROOT / "results" / f"probe_allocations-{args.task}-{args.budget}.json")
    rows = json.loads(out.read_text()) if out.exists() else []

    def record(kind: str, setting, model, extra: dict, started: float) -> None:
        accs = [recover(model, task, seed, args.recovery_steps) for seed in range(args.seeds)]
        row = {"kind": kind, "setting": setting, "flops": count_flops(model, example), "target": target,
               "accs": accs, "test_acc_mean": statistics.mean(accs), "seconds": time.time() - started, **extra}
        rows.append(row)
        out.write_text(json.dumps(rows, indent=1))
        print(f"{kind} {setting}: {100 * row['test_acc_mean']:.2f} ({row['flops']} FLOPs) {extra}", flush=True)

    if args.blend:
        sens, _, _ = sensitivity_policy(pruner, task, config, target, args.keep_min)
        anchor = {g: c.keep for g, c in sens.groups.items()}
        for t in (float(x) for x in args.blend.split(",")):
            started = time.time()
            policy = fill_budget(blend_widths(anchor, t), "l1", predict=pruner.predict_flops, budget=target,
                                 keep_min=args.keep_min)
            record("blend", t, pruner.apply(policy)[0],
                   {"keeps": [round(c.keep, 3) for c in policy.groups.values()]}, started)
    for entry in args.drop_blocks.split(";") if args.drop_blocks else []:
        if args.task != "resnet20":
            raise SystemExit("--drop-blocks needs --task resnet20")
        started = time.time()
        drops = [int(i) for i in entry.split(",") if i.strip()]
        model = copy.deepcopy(dense)
        for i in drops:
            if not isinstance(model.layers[i].shortcut, nn.Identity):
                raise SystemExit(f"block {i} has a projection shortcut and cannot be removed")
            model.layers[i] = nn.Identity()
        sub = pruner_of(model, example, config)
        policy, r = uniform_policy(sub, target)
        record("drop-blocks", drops, sub.apply(policy)[0], {"keep": round(r, 3)}, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())  # run as a script, scripts/ is on sys.path (bench_quality)
