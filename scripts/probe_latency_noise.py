#!/usr/bin/env python3
"""Probe: how stable is the latency meter's ratio on a busy machine, by its minimum or its median?

SmallCNN (28 px, channels rounded to 8) at uniform keep 0.6 against the dense model, measured
``--repeats`` times as ``LatencyMeter`` measures (dense and pruned alternating in 5 rounds of 5
passes), in onnxruntime and PyTorch at batch 64 on one thread. Prints the pruned/dense ratio of
the fastest passes and of the medians for each measurement. Run it beside other jobs to see
what contention does to each.

    python scripts/probe_latency_noise.py --repeats 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)

    import torch

    from autoprune.latency import LatencyMeter
    from autoprune.models import build_model
    from autoprune.policy import GroupChoice, Policy
    from autoprune.prune import Pruner
    from autoprune.task import resolve_ignore

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = build_model("smallcnn", num_classes=10, in_channels=1, input_size=28).eval()
    x = torch.zeros(1, 1, 28, 28)
    pruner = Pruner(dense, x, ignored=resolve_ignore(dense, x, [], prune_stem=False), round_to=8)
    model, _ = pruner.apply(Policy({g.id: GroupChoice("l1", 0.6) for g in pruner.groups}))
    for runtime in ("onnxruntime", "torch"):
        meter = LatencyMeter(dense, x, runtime=runtime, batch=args.batch)
        by_min, by_median = [], []
        with tempfile.TemporaryDirectory() as tmp:
            runs = {"dense": meter._runner(dense, Path(tmp), "dense"), "pruned": meter._runner(model, Path(tmp), "pruned")}
            for run in runs.values():
                run()
            for _ in range(args.repeats):
                samples: dict[str, list[float]] = {"dense": [], "pruned": []}
                for r in range(meter.rounds):
                    for who in (("dense", "pruned") if r % 2 == 0 else ("pruned", "dense")):
                        for _ in range(meter.repeats):
                            t0 = time.perf_counter()
                            runs[who]()
                            samples[who].append((time.perf_counter() - t0) * 1000)
                by_min.append(min(samples["pruned"]) / min(samples["dense"]))
                by_median.append(statistics.median(samples["pruned"]) / statistics.median(samples["dense"]))
        print(f"{runtime}: ratio of minimums {[round(v, 3) for v in by_min]}; of medians {[round(v, 3) for v in by_median]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
