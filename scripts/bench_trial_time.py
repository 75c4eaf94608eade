#!/usr/bin/env python3
"""Benchmark: trial time of this checkout against an earlier commit, side by side.

Runs the same short search (Fashion-MNIST, SmallCNN, budget 0.5, the same dense checkpoint,
one thread) with this checkout and with ``--ref`` checked out in a git worktree, in
alternating rounds, and compares the trials' mean wall seconds (``seconds.total`` stored with
each trial). Ratios measured in one run on one machine; never compare across machines.

    python scripts/bench_trial_time.py --ref 3fee368 --rounds 2 --trials 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(checkout: Path, work: Path, name: str, args: argparse.Namespace, checkpoint: Path) -> list[float]:
    storage = f"sqlite:///{work}/{name}.db"
    cmd = [sys.executable, "-m", "autoprune", "search", "--budget-flops", "0.5", "--trials", str(args.trials),
           "--finetune-steps", str(args.steps), "--threads", "1", "--checkpoint", str(checkpoint), "--quiet",
           "--storage", storage, "--study", name, "--out", str(work / name)]
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: {proc.stderr.strip()[-1500:]}")
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return [t.user_attrs["seconds"]["total"] for t in study.trials if t.state.name == "COMPLETE"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", required=True, help="the commit to compare with")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--out", default=str(ROOT / "results" / "bench_trial_time.json"))
    args = p.parse_args(argv)

    import torch

    from autoprune.models import build_model
    from autoprune.train import save_state

    work = Path(tempfile.mkdtemp(prefix="autoprune-trial-time-"))
    old = work / "ref"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.ref], check=True,
                   capture_output=True)
    try:
        torch.manual_seed(0)  # the same (untrained) dense weights for both: the trial loop is what is timed
        checkpoint = work / "dense.pt"
        save_state(build_model("smallcnn", num_classes=10, in_channels=1, input_size=28), checkpoint)
        times: dict[str, list[float]] = {"ref": [], "this": []}
        for r in range(args.rounds):
            for label, checkout in (("ref", old), ("this", ROOT)):
                seconds = run(checkout, work, f"{label}-{r}", args, checkpoint)
                times[label] += seconds
                print(f"round {r} {label}: {', '.join(f'{s:.2f}' for s in seconds)} s per trial", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    mean = {k: statistics.mean(v) for k, v in times.items()}
    ratio = mean["this"] / mean["ref"]
    print(f"mean seconds per trial: {args.ref} {mean['ref']:.2f}, this checkout {mean['this']:.2f} (ratio {ratio:.3f})")
    Path(args.out).write_text(json.dumps({"command": "python scripts/bench_trial_time.py " + " ".join(argv or sys.argv[1:]),
                                          "ref": args.ref, "seconds": times, "mean": mean, "ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
