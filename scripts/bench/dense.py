#!/usr/bin/env python3
"""Is a benchmark's dense checkpoint converged? Trains (or loads, cached) the dense baseline at
``--epochs`` N and N + 2 (each its own schedule, as ``dense_epochs`` trains it) and prints both
TEST accuracies: converged when the two more epochs change it by less than 0.1 pt.

    python -m scripts.bench.dense --model smallcnn --epochs 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from scripts.bench.common import ROOT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--epochs", type=int, required=True, help="N: trains N and N + 2")
    p.add_argument("--only", type=int, default=None, help="train just this many epochs (to run N and N+2 apart)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="default results/bench_dense-<model>.json")
    args = p.parse_args(argv)

    import torch

    from autoprune.core.loops import evaluate
    from scripts.bench.common import load_bench_task

    torch.set_num_threads(args.threads)
    rows = {}
    for epochs in ([args.only] if args.only else [args.epochs, args.epochs + 2]):
        t = time.perf_counter()
        _, _, task, dense, _, _ = load_bench_task(args.model, 0.125, threads=args.threads, dense_epochs=epochs)
        rows[epochs] = {"test_accuracy": evaluate(dense, task.test), "seconds": round(time.perf_counter() - t, 1)}
        print(f"{args.model} dense, {epochs} epochs: test {100 * rows[epochs]['test_accuracy']:.2f}% "
              f"({rows[epochs]['seconds']} s, cached afterwards)", flush=True)
    if args.only:
        return 0
    change = 100 * (rows[args.epochs + 2]["test_accuracy"] - rows[args.epochs]["test_accuracy"])
    print(f"two more epochs change test accuracy by {change:+.2f} pt: "
          + ("converged" if abs(change) < 0.1 else "NOT converged (< 0.1 pt asked)"))
    out = ROOT / "results" / f"bench_dense-{args.model}.json" if args.out is None else args.out
    out.write_text(json.dumps({"model": args.model, "epochs": rows, "change_pt": change}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
