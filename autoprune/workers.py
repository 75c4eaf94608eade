"""Several search processes on one study: ``search --workers N`` creates the study, then starts
N local worker processes and follows them; ``autoprune worker`` joins an existing study,
here or from another machine, with the setup read from the study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from autoprune.errors import UserError
from autoprune.task.config import SearchConfig


def threads_per_worker(n: int, given: int | None) -> int:
    """``given``, else the machine's cores shared out: ``cores // n`` (at least 1)."""
    return given if given is not None else max(1, (os.cpu_count() or 1) // n)


def devices_for(config: SearchConfig, n: int) -> list[str | None]:
    """One device per worker: with several CUDA GPUs and ``--device auto`` or ``cuda``, the
    workers take them in turn; otherwise every worker uses ``config.device``."""
    if config.device in ("auto", "cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > 1:
            return [f"cuda:{k % count}" for k in range(n)]
    return [None] * n


def worker_command(config: SearchConfig, *, index: int, until: int, threads: int, device: str | None,
                   checkpoint: Path, artifact_dir: str) -> list[str]:
    cmd = [sys.executable, "-m", "autoprune", "worker", "--storage", config.storage_url, "--study", config.study_name,
           "--worker-index", str(index), "--until", str(until), "--threads", str(threads),
           "--checkpoint", str(checkpoint), "--artifact-dir", artifact_dir, "--heartbeat", str(config.heartbeat),
           "--db-retry", repr(config.db_retry), "--quiet"]
    if config.data_root:
        cmd += ["--data-root", config.data_root]
    if device:
        cmd += ["--device", device]
    if config.timeout:
        cmd += ["--timeout", repr(config.timeout)]
    return cmd


def run_workers(config: SearchConfig, *, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """``search --workers N``: create (or resume) the study in this process, with the dense
    model, warm start and reference curves, so that no worker races on a new schema; then
    start N workers that share ``config.trials`` trained trials, each on
    ``threads_per_worker`` threads, and follow the study until they exit. Ctrl-C or SIGTERM
    is passed on to the workers, whose trials in flight are queued again."""
    from autoprune.policy_search import study as studies
    from autoprune.policy_search.run import run_search

    n = config.workers
    t0 = time.perf_counter()
    study, _ = run_search(config, progress=progress, setup_only=True)
    info = studies.info(study)
    held = study.get_trials(deepcopy=False)  # this run's: those queued by its warm start, and all after them
    first = min([t.number for t in held if t.state.name == "WAITING"] + [len(held)])
    until = studies.trained_count(study) + config.trials
    threads = threads_per_worker(n, config.threads)
    devices = devices_for(config, n)
    checkpoint = Path(info["dense"]["checkpoint"])
    if progress:
        print(f"starting {n} workers on study {study.study_name!r}: {config.trials} trials in all, {threads} thread(s) "
              f"each{'' if devices[0] is None else ', devices ' + ', '.join(map(str, devices))}", file=sys.stderr)
    procs = [subprocess.Popen(worker_command(config, index=k, until=until, threads=threads, device=devices[k],
                                             checkpoint=checkpoint, artifact_dir=info["artifacts"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # Ctrl-C reaches them through this process, once
             for k in range(n)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.trials, desc=f"trials ({n} workers)", unit="trial", dynamic_ncols=True, file=sys.stderr)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            if bar is not None:
                done = studies.trained_count(study) - (until - config.trials)
                bar.update(max(0, min(config.trials, done) - bar.n))
    except KeyboardInterrupt as exc:
        from autoprune.policy_search import interrupts

        interrupts.acknowledge()
        sig = signal.SIGTERM if getattr(exc, "signal_name", "") == "SIGTERM" else signal.SIGINT
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        if bar is not None:
            bar.close()
    errors = []
    for k, p in enumerate(procs):
        err = (p.stderr.read() if p.stderr else "").strip().splitlines()
        if p.returncode != 0:
            errors.append(f"worker {k} exited with code {p.returncode}" + (f": {err[-1]}" if err else ""))
    counts = tally(study, first)
    counts["seconds"] = round(time.perf_counter() - t0, 1)
    counts["worker_errors"] = errors
    return study, counts


def tally(study: Any, first: int) -> dict[str, Any]:
    """The counts ``search`` prints, over the study's trials numbered ``first`` and later."""
    from optuna.trial import TrialState

    from autoprune.policy_search.study import failure_reason, retries

    counts: dict[str, Any] = {"complete": 0, "early_stopped": 0, "infeasible": 0, "failed": 0, "failures": {}}
    trials = study.get_trials(deepcopy=False)
    retried = retries(trials)
    for t in trials:
        if t.number < first:
            continue
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.PRUNED:
            counts["early_stopped" if t.user_attrs.get("early_stopped") else "infeasible"] += 1
        elif t.state == TrialState.FAIL:
            counts["failed"] += 1
            counts["failures"].setdefault(failure_reason(t, retried), []).append(t.number)
    return counts


def join_config(info: dict[str, Any], *, storage: str, study: str, overrides: dict[str, Any]) -> SearchConfig:
    """The config a worker runs with: the study's own, with this machine's ``overrides``
    (threads, device, data_root, ...) and the storage it was reached through."""
    stored = dict(info["config"])
    stored.update({k: v for k, v in overrides.items() if v is not None})
    stored["storage"], stored["study"] = storage, study
    config = SearchConfig.from_stored(stored, source="the study's stored config", resume=True)
    if config.workers != 1:
        config.workers = 1  # a worker is one process
    return config


def remaining(info: dict[str, Any], trained: int) -> int:
    """Trials a joining worker runs when not told: up to the study's own ``trials``."""
    total = int(info["config"].get("trials", 0))
    if trained >= total:
        raise UserError(f"the study already holds {trained} trained trials (its --trials was {total}); pass "
                        "--trials N to run N more")
    return total
