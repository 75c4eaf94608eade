"""Reference curves: what simple rules reach with the same short fine-tune as the trials.

At a few FLOPs levels between the budget and a floor, two rules an engineer would try by
hand: uniform L1 (one keep ratio for every group) and Torch-Pruning's global magnitude
ranking (one threshold across groups), each solved to the level by exact FLOPs, then given
a trial's recovery (BN recalibration, the same fine-tune steps and learning rate) and scored
on search-val. Cached per dense model, data and settings, so every study of the same model
reuses them. ``hypervolume`` measures a front or a curve in the same units.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from autoprune.core.batches import Split
from autoprune.core.budget import global_magnitude, uniform_at_budget
from autoprune.core.compute import Ledger
from autoprune.core.device import Runtime
from autoprune.core.loops import evaluate, recover_model
from autoprune.core.measure.flops import count_flops
from autoprune.core.prune import Pruner

RULES = ("uniform L1", "global magnitude")


def levels(budget: int, floor: float, n: int = 3) -> list[int]:
    """``n`` FLOPs levels from the budget down to ``floor`` x budget, evenly on a log scale."""
    if n == 1:
        return [budget]
    return [int(budget * floor ** (i / (n - 1))) for i in range(n)]


def curves(pruner: Pruner, train: Split, val: Split, targets: Sequence[int], *, steps: int, lr: float, batch_size: int,
           bn_batches: int, seed: int, runtime: Runtime | None = None, bn_data: Split | None = None,
           cache_dir: Path | None = None, key: str = "") -> dict[str, list[dict[str, float]]]:
    """{rule: [{"flops", "accuracy", "target", "compute_flops"}]} at every target (``compute_flops``:
    what recovering and scoring that point cost, core/compute.py); read from ``cache_dir`` when
    the same curves (``key``: dense weights, data, settings) were measured before."""
    rt = runtime if runtime is not None else Runtime()
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps({"format": 2, "key": key, "targets": list(targets), "steps": steps, "lr": lr,
                                            "batch_size": batch_size, "bn_batches": bn_batches, "seed": seed,
                                            "ignored": pruner.ignored, "min_channels": pruner.min_channels,
                                            "round_to": pruner.round_to}, sort_keys=True).encode()).hexdigest()
        path = Path(cache_dir) / f"references-{digest[:16]}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())["curves"]
            except (OSError, ValueError, KeyError):
                pass
    t0 = time.perf_counter()
    out: dict[str, list[dict[str, float]]] = {rule: [] for rule in RULES}
    for target in targets:
        for rule in RULES:
            if rule == "uniform L1":
                model, _ = pruner.apply(uniform_at_budget(pruner, target))
            else:
                model = global_magnitude(pruner.dense, pruner.example_input, pruner.ignored, target)
            flops = count_flops(model, pruner.example_input)
            model.to(rt.device)
            with Ledger().watching(model, flops) as ledger:
                recover_model(model, train, steps=steps, seed=seed, bn_batches=bn_batches, batch_size=batch_size,
                              lr=lr, bn_data=bn_data, amp=rt.amp, workers=rt.workers)
                accuracy = evaluate(model, val, amp=rt.amp, workers=rt.workers)
            out[rule].append({"target": int(target), "flops": int(flops), "accuracy": accuracy,
                              "compute_flops": ledger.total})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"curves": out, "seconds": time.perf_counter() - t0}))
        tmp.replace(path)
    return out


def hypervolume(points: Sequence[tuple[float, float]], *, max_flops: float) -> float:
    """Area dominated by ``points`` (accuracy to maximise, FLOPs to minimise) up to the
    reference point (accuracy 0, FLOPs ``max_flops``), FLOPs as a fraction of ``max_flops``:
    a front at accuracy 1 down to 0 FLOPs scores 1. Points above ``max_flops`` count nothing."""
    pts = sorted((f / max_flops, a) for a, f in points if f <= max_flops and a > 0)
    area, best = 0.0, 0.0
    # sweep from the cheapest: each point adds its accuracy gain over the cheaper ones, over
    # the FLOPs range from it to the reference
    for f, a in pts:
        if a > best:
            area += (a - best) * (1 - f)
            best = a
    return area
