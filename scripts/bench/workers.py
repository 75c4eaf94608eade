#!/usr/bin/env python3
"""Benchmark: trials per hour of 1 worker against N workers (``search --workers N``), each
with 1 thread, on one study storage, side by side (the runs alternate, round after round).

Every run is a fresh study with the same setup: the fill space (every trial spends the whole
budget, so trials cost alike), the random sampler, the same fine-tune steps and dense model.
Two rates per run: the trial phase (trials / (last end - first start), from the study's
timestamps) and the whole command (trials / its wall time, with process start-up and study
set-up). PostgreSQL by default when Debian's server binaries are installed (a throwaway
cluster, as in the tests), else SQLite.

    python -m scripts.bench.workers --workers 2 --trials 12 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(storage: str, study: str, workers: int, args: argparse.Namespace, work: Path) -> dict:
    cmd = [sys.executable, "-m", "autoprune", "search", "--dataset", args.dataset, "--model", args.model,
           "--budget-flops", "0.5", "--space", "fill", "--sampler", "random", "--trials", str(args.trials),
           "--finetune-steps", str(args.steps), "--no-references", "--threads", "1", "--workers", str(workers),
           "--storage", storage, "--study", study, "--quiet", "--out", str(work / study)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    import optuna

    trials = [t for t in optuna.load_study(study_name=study, storage=storage).trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    params = [tuple(sorted(t.params.items())) for t in trials]
    return {"workers": workers, "trials": len(trials), "trial_phase_s": span, "wall_s": wall,
            "trials_per_hour": 3600 * len(trials) / span, "trials_per_hour_wall": 3600 * len(trials) / wall,
            "duplicates": len(params) - len(set(params)),
            "worker_pids": len({t.user_attrs["worker"]["pid"] for t in trials})}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--storage", help="default: a throwaway PostgreSQL cluster if its binaries exist, else SQLite")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_workers.json"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    server = None
    storage = args.storage
    if storage is None:
        from autoprune.testing import PG_BIN, PostgresServer

        if (PG_BIN / "initdb").exists():
            server = PostgresServer()
            storage = server.url
        else:
            storage = f"sqlite:///{work}/bench.db"
    try:
        # the dense model, trained once and cached for every run
        run(storage, "warm-up", 1, argparse.Namespace(**{**vars(args), "trials": 1}), work)
        runs = []
        for r in range(args.rounds):
            for n in (1, args.workers):
                res = run(storage, f"r{r}-w{n}", n, args, work)
                runs.append(res)
                print(f"round {r}, {n} worker(s): {res['trials']} trials, trial phase {res['trial_phase_s']:.1f} s "
                      f"({res['trials_per_hour']:.0f}/h), command {res['wall_s']:.1f} s "
                      f"({res['trials_per_hour_wall']:.0f}/h), {res['duplicates']} duplicate(s)", flush=True)
    finally:
        if server is not None:
            server.close()
    one = [r for r in runs if r["workers"] == 1]
    many = [r for r in runs if r["workers"] == args.workers]
    ratio = statistics.median(m["trials_per_hour"] / o["trials_per_hour"] for o, m in zip(one, many, strict=True))
    ratio_wall = statistics.median(m["trials_per_hour_wall"] / o["trials_per_hour_wall"] for o, m in zip(one, many, strict=True))
    result = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
              "storage": "postgresql" if server or storage.startswith("postgresql") else "sqlite",
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "storage")}, "runs": runs,
              "ratio_trial_phase": ratio, "ratio_wall": ratio_wall}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\n{args.workers} workers x 1 thread against 1 worker x 1 thread, median over {args.rounds} rounds: "
          f"{ratio:.2f}x the trials per hour in the trial phase, {ratio_wall:.2f}x for the whole command")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
