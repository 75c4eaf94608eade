#!/usr/bin/env python3
"""Benchmark: does a search stream an image folder at real resolution in bounded memory?

Writes ImageFolders of N JPEGs at 224x224 (10 classes; a tenth as many test images), then for
each N:

* decode throughput: one pass over ``--decode-images`` train images through the training
  transform (decode, random-resized crop, flip, normalise), with 0 and with 2 DataLoader workers;
* a short search of torchvision resnet18 at 224 px from a fixed random checkpoint (no dense
  training): ``--trials`` trials, in a process of its own, whose peak RSS is read from the
  kernel (the largest of the search process and its loader workers).

Peak memory must not grow with the number of images: nothing holds the decoded dataset.

    python -m scripts.bench.data --sizes 5000,20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_folder(root: Path, n_train: int, size: int = 224, classes: int = 10) -> float:
    """JPEGs of smooth random colour fields with noise (about 10 KB each); seconds spent."""
    import numpy as np
    from PIL import Image

    marker = root / f".complete-{n_train}"
    if marker.exists():
        return 0.0
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, n in (("train", n_train), ("test", max(classes, n_train // 10))):
        for i in range(n):
            c = i % classes
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            a, b = rng.uniform(0.5, 3.0, 2)
            base = np.stack([np.sin(a * xx * (c + 1) + b), np.cos(b * yy * (c + 1)), np.sin((xx + yy) * a)], axis=-1)
            pixels = (127 + 90 * base + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=85)
    marker.write_text("ok")
    return time.perf_counter() - t0


def decode_rate(root: Path, images: int, workers: int) -> float:
    """Training images per second through the DataLoader (decode + augmentation + normalisation)."""
    import torch

    from autoprune.task.splits import load_task

    task = load_task("imagefolder", root=root, image_size=224, val_size=200)
    sub = task.train.subset(torch.arange(min(images, len(task.train))))
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in sub.batches(64, generator=torch.Generator().manual_seed(0), workers=workers))
    return n / (time.perf_counter() - t0)


def search(root: Path, work: Path, checkpoint: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "autoprune", "search", "--dataset", "imagefolder", "--data-root", str(root),
           "--model", "resnet18", "--image-size", "224", "--checkpoint", str(checkpoint), "--budget-flops", "0.5",
           "--trials", str(args.trials), "--finetune-steps", str(args.steps), "--batch-size", "32",
           "--bn-batches", "2", "--val-size", "200", "--methods", "l1,fpgm", "--data-workers", "2",
           "--threads", str(args.threads), "--device", "cpu", "--quiet", "--study", f"bench-{root.name}",
           "--storage", f"sqlite:///{work}/bench-{root.name}.db", "--out", str(work / root.name)]
    # a fresh wrapper process per search: its RUSAGE_CHILDREN peak is this search's alone
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, cwd=work,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"search failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    lines = proc.stdout.strip().splitlines()
    peak_kb = int(next(line.split()[1] for line in lines if line.startswith("PEAK")))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024),
            "summary": [line for line in lines if not line.startswith("PEAK")][-8:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="5000,20000", help="training images per folder")
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="fine-tune steps per trial (batch 32 at 224 px)")
    p.add_argument("--decode-images", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/autoprune-bench-data", help="where the image folders and studies go")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_data.json"))
    args = p.parse_args(argv)

    import torch

    from autoprune.core.checkpoints import save_state
    from autoprune.task.models import build_model

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "resnet18-random.pt"
    if not checkpoint.exists():
        torch.manual_seed(0)
        save_state(build_model("resnet18", num_classes=10, in_channels=3, input_size=224), checkpoint)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        root = work / f"folder-{n}"
        made = make_folder(root, n)
        row = {"train_images": n, "generate_seconds": round(made, 1),
               "decode_images_per_s": {w: round(decode_rate(root, args.decode_images, w), 1) for w in (0, 2)}}
        row["search"] = search(root, work, checkpoint, args)
        rows.append(row)
        print(f"{n} images: decode {row['decode_images_per_s'][0]} img/s (0 workers), "
              f"{row['decode_images_per_s'][2]} img/s (2 workers); search of {args.trials} trials "
              f"{row['search']['seconds']} s, peak RSS {row['search']['peak_rss_mb']} MB", flush=True)
    if len(rows) > 1:
        growth = rows[-1]["search"]["peak_rss_mb"] / rows[0]["search"]["peak_rss_mb"]
        print(f"peak RSS {rows[-1]['train_images']} vs {rows[0]['train_images']} images: {growth:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m scripts.bench.data " + " ".join(argv or sys.argv[1:]),
                               "threads": args.threads, "cores": os.cpu_count(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
