"""Per-group sensitivity: search-val accuracy after pruning each group alone at each keep
level (BatchNorm recalibrated, no fine-tune), and a policy derived from it that meets a
FLOPs budget by pruning the least sensitive groups first."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from autoprune.core.batches import Split
from autoprune.core.device import Runtime
from autoprune.core.loops import evaluate, recalibrate_bn
from autoprune.core.measure.flops import count_flops
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner


def analyse(
    pruner: Pruner,
    train: Split,
    val: Split,
    levels: list[float],
    *,
    method: str = "l1",
    images: int = 2000,
    bn_batches: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = False,
    cache_dir: Path | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """{"dense_accuracy", "method", "levels", "seconds", "groups": {gid: [{"keep", "accuracy", "flops"}]}}.

    It costs one pruned evaluation per group and level (minutes on a ResNet-20 on a CPU). With
    ``cache_dir``, the result is stored there and returned from there when the same analysis
    (same dense weights, images, groups, levels and settings) runs again, e.g. the
    ``sensitivity`` command, then a search's warm start."""
    path = None
    if cache_dir is not None:
        settings = {"method": method, "images": images, "bn_batches": bn_batches, "batch_size": batch_size,
                    "seed": seed}
        path = Path(cache_dir) / f"sensitivity-{analysis_key(pruner, train, val, levels, **settings)[:16]}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                pass  # unreadable: run it again and overwrite
    t0 = time.perf_counter()
    rt = runtime if runtime is not None else Runtime()
    scored = val.head(images)
    dense_flops = count_flops(pruner.dense, pruner.example_input)
    dense = pruner.dense if rt.device.type == "cpu" else copy.deepcopy(pruner.dense).to(rt.device)
    result: dict[str, Any] = {
        "method": method, "levels": levels, "images": len(scored), "dense_flops": dense_flops,
        "dense_accuracy": evaluate(dense, scored, amp=rt.amp, workers=rt.workers), "groups": {},
    }
    del dense
    todo = [(g, k) for g in pruner.groups for k in levels if k < 1]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sensitivity", unit="prune", leave=False)
    for group, keep in todo:
        model, _ = pruner.apply(Policy({group.id: GroupChoice(method, keep)}))
        flops = count_flops(model, pruner.example_input)
        model.to(rt.device)
        recalibrate_bn(model, train, num_batches=bn_batches, batch_size=batch_size, seed=seed, workers=rt.workers)
        result["groups"].setdefault(group.id, []).append(
            {"keep": keep, "accuracy": evaluate(model, scored, amp=rt.amp, workers=rt.workers), "flops": flops}
        )
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    result["seconds"] = time.perf_counter() - t0  # what a cache hit saves
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)  # atomic: a concurrent worker never reads half a file
    return result


def analysis_key(pruner: Pruner, train: Split, val: Split, levels: list[float], **settings: Any) -> str:
    """What an analysis depends on, hashed: the dense weights, the groups and their rounding,
    the images (BN recalibration and scoring), the levels and the settings."""
    h = hashlib.sha256()
    for name, value in pruner.dense.state_dict().items():
        h.update(name.encode())
        h.update(str((tuple(value.shape), str(value.dtype))).encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    h.update(train.digest().encode())
    h.update(val.digest().encode())
    h.update(json.dumps({"groups": [(g.id, g.channels, g.channel_groups, g.segment_sizes()) for g in pruner.groups],
                         "round_to": pruner.round_to, "min_channels": pruner.min_channels,
                         "levels": [float(k) for k in levels], **settings}, sort_keys=True).encode())
    return h.hexdigest()


def derived_policy(result: dict[str, Any], pruner: Pruner, levels: list[float], budget_flops: int) -> Policy | None:
    """Greedy allocation: starting from the dense model, repeatedly lower one group by one keep
    level, choosing the step with the least single-group accuracy loss per FLOP saved (FLOPs
    of the whole candidate counted exactly), until the budget is met. None if it cannot be."""
    method = result["method"]
    acc = {gid: {r["keep"]: r["accuracy"] for r in rows} for gid, rows in result["groups"].items()}
    for gid in acc:
        acc[gid][1.0] = result["dense_accuracy"]
    keep = {g.id: 1.0 for g in pruner.groups}
    ordered = sorted(set(levels) | {1.0})

    def flops_of(k: dict[str, float]) -> int:
        model, _ = pruner.apply(Policy({gid: GroupChoice(method, v) for gid, v in k.items()}))
        return count_flops(model, pruner.example_input)

    current = flops_of(keep)
    while current > budget_flops:
        best = None
        for gid, k in keep.items():
            i = ordered.index(k)
            if i == 0 or gid not in acc:
                continue
            lower = ordered[i - 1]
            candidate = {**keep, gid: lower}
            f = flops_of(candidate)
            saved = current - f
            if saved <= 0:
                continue
            loss = max(0.0, acc[gid][k] - acc[gid].get(lower, 0.0))
            score = (loss + 1e-4) / saved
            if best is None or score < best[0]:
                best = (score, candidate, f)
        if best is None:
            return None
        _, keep, current = best
    return Policy({gid: GroupChoice(method, v) for gid, v in keep.items()})


def write(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    from matplotlib.figure import (
        Figure,  # no pyplot: the caller's matplotlib backend is left alone
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "sensitivity.json", "png": out_dir / "sensitivity.png"}
    paths["json"].write_text(json.dumps(result, indent=1))
    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.subplots()
    for gid, rows in result["groups"].items():
        ks = [r["keep"] for r in rows] + [1.0]
        accs = [100 * r["accuracy"] for r in rows] + [100 * result["dense_accuracy"]]
        ax.plot(ks, accs, marker="o", ms=3, label=gid)
    ax.set_xlabel(f"keep ratio of one group ({result['method']}; all others dense)")
    ax.set_ylabel(f"search-val accuracy (%), BN recalibrated, no fine-tune ({result['images']} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(paths["png"])
    return paths


def format_table(result: dict[str, Any]) -> str:
    levels = [k for k in result["levels"] if k < 1]
    head = f"{'group':<28}" + "".join(f"{k:>8.3g}" for k in levels)
    lines = [f"search-val accuracy after pruning one group ({result['method']}, BN recalibrated, no fine-tune); "
             f"dense {result['dense_accuracy']:.4f}", head, "-" * len(head)]
    for gid, rows in result["groups"].items():
        lines.append(f"{gid:<28}" + "".join(f"{r['accuracy']:8.4f}" for r in rows))
    return "\n".join(lines)
