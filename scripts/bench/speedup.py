#!/usr/bin/env python3
"""Benchmark: does half the FLOPs mean twice the speed? CPU speed-up against FLOPs reduction.

torchvision resnet18 and mobilenet_v2 at 112 px (random weights: speed does not depend on
them), pruned uniformly (L1) to about half their FLOPs in a few variants (the stem kept
whole, the default; the stem prunable; channel counts rounded to multiples of 8). Every
model is timed in PyTorch and in onnxruntime, at batch 1 and 64, on ``--threads`` CPU
threads, in shuffled round-robin passes in one process. The figure of merit is
(dense latency / pruned latency) / (dense FLOPs / pruned FLOPs): 1.0 means FLOPs translate
into speed one for one.

``--search N`` adds what ``search --budget-latency`` can find in the same space: N random
relative widths filled to the same FLOPs budget (channels rounded to 8), each timed against
the dense model with autoprune's latency meter (latency.py) in PyTorch and in onnxruntime
at batch 1; the fastest by each runtime joins the shuffled rounds above, so its figure is
measured again side by side with every other model, not taken from the search's own
(optimistically chosen) measurement.

    python -m scripts.bench.speedup --threads 1 --search 24
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {"stem kept (default)": {}, "stem pruned": {"prune_stem": True}, "round to 8": {"round_to": 8},
            "stem pruned, round to 8": {"prune_stem": True, "round_to": 8}}


def latency_search(dense, example, name: str, args) -> dict:
    """{runtime: (the fastest of ``args.search`` random policies at the budget, its measured
    latency ratio)}: fill-space policies (random relative widths, the scale solved for the
    FLOPs budget), rounded to 8, timed by autoprune's latency meter at batch 1."""
    from autoprune.core.budget import fill_budget
    from autoprune.core.measure.flops import count_flops
    from autoprune.core.measure.latency import LatencyMeter
    from autoprune.task.config import SearchConfig
    from autoprune.task.setup import pruner_of

    config = SearchConfig.from_dict({"model": name, "budget_flops": str(args.budget), "round_to": 8})
    pruner = pruner_of(dense, example, config)
    budget = args.budget * count_flops(dense, example)
    rng = random.Random(0)
    policies = []
    for _ in range(args.search):
        widths = {g.id: 2 ** rng.uniform(-1.0, 1.0) for g in pruner.groups}
        policies.append(fill_budget(widths, "l1", predict=pruner.predict_flops, budget=budget, keep_min=0.125))
    best = {}
    for runtime in ("torch", "onnxruntime"):
        meter = LatencyMeter(dense, example, runtime=runtime, batch=1)
        timed = []
        for policy in policies:
            model, resolved = pruner.apply(policy)
            timed.append((meter.measure(model, resolved.channels())["ratio"], policy))
        ratio, policy = min(timed, key=lambda t: t[0])
        best[runtime] = (policy, ratio)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--budget", type=float, default=0.5, help="fraction of dense FLOPs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--search", type=int, default=0, help="also the fastest of this many random policies at the budget")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_speedup.json"))
    args = p.parse_args(argv)

    import torch

    from autoprune.core.budget import uniform_at_budget
    from autoprune.core.measure import onnx as ox
    from autoprune.core.measure.flops import count_flops, latency_ms
    from autoprune.task.config import SearchConfig
    from autoprune.task.models import build_model
    from autoprune.task.setup import pruner_of

    torch.set_num_threads(args.threads)
    example = torch.zeros(1, 3, args.size, args.size)
    work = Path(tempfile.mkdtemp(prefix="autoprune-speedup-"))
    entries = []  # (model name, variant, module, flops, onnx session)
    for name in args.models.split(","):
        torch.manual_seed(0)
        dense = build_model(name, num_classes=1000, in_channels=3, input_size=args.size).eval()
        dense_flops = count_flops(dense, example)
        entries.append((name, "dense", dense, dense_flops, None))
        for variant, options in VARIANTS.items():
            config = SearchConfig.from_dict({"model": name, "budget_flops": str(args.budget), **options})
            pruner = pruner_of(dense, example, config)
            pruned, _ = pruner.apply(uniform_at_budget(pruner, args.budget * dense_flops))
            entries.append((name, variant, pruned.eval(), count_flops(pruned, example), None))
        if args.search:
            for runtime, (policy, ratio) in latency_search(dense, example, name, args).items():
                config = SearchConfig.from_dict({"model": name, "budget_flops": str(args.budget), "round_to": 8})
                pruned, _ = pruner_of(dense, example, config).apply(policy)
                print(f"{name}: fastest of {args.search} in {runtime} at batch 1: {ratio:.3f} of dense", file=sys.stderr)
                entries.append((name, f"fastest of {args.search} ({runtime}, batch 1), round to 8", pruned.eval(),
                                count_flops(pruned, example), None))
    entries = [(n, v, m, f, ox.session(ox.export(m, example, work / f"{n}-{i}.onnx"), threads=args.threads))
               for i, (n, v, m, f, _) in enumerate(entries)]
    jobs = [(i, runtime, batch) for i in range(len(entries)) for runtime in ("pytorch", "onnxruntime") for batch in (1, 64)]
    samples: dict[tuple[int, str, int], list[float]] = {}
    rng = random.Random(0)
    for round_ in range(args.rounds + 1):  # round 0 warms up
        rng.shuffle(jobs)
        for i, runtime, batch in jobs:
            x = example.expand(batch, 3, args.size, args.size).contiguous()
            model, sess = entries[i][2], entries[i][4]
            ms = (latency_ms(model, x, batch=batch, repeats=3, warmup=1) if runtime == "pytorch"
                  else ox.latency_ms(sess, x, repeats=3, warmup=1))
            if round_:
                samples.setdefault((i, runtime, batch), []).append(ms)
    rows = []
    for i, (name, variant, _, flops, _) in enumerate(entries):
        if variant == "dense":
            dense_i = i
            continue
        d_flops = entries[dense_i][3]
        for runtime in ("pytorch", "onnxruntime"):
            for batch in (1, 64):
                d = statistics.median(samples[(dense_i, runtime, batch)])
                q = statistics.median(samples[(i, runtime, batch)])
                rows.append({"model": name, "variant": variant, "runtime": runtime, "batch": batch,
                             "flops_ratio": d_flops / flops, "speedup": d / q, "merit": (d / q) / (d_flops / flops),
                             "dense_ms": d, "pruned_ms": q})
    print(f"\n{args.size} px, uniform L1 at {args.budget} of dense FLOPs, {args.threads} thread(s), "
          f"median of {args.rounds} shuffled rounds x 3 runs\n")
    print("| model | variant | runtime | batch | FLOPs reduction | speed-up | speed-up / FLOPs reduction |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['runtime']} | {r['batch']} | {r['flops_ratio']:.2f}x | "
              f"{r['speedup']:.2f}x | {r['merit']:.2f} |")
    Path(args.out).write_text(json.dumps({"command": "python -m scripts.bench.speedup " + " ".join(argv or sys.argv[1:]),
                                          "size": args.size, "threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
