"""Several worker processes on one PostgreSQL study, as a user runs them: nothing lost,
nothing repeated, a killed worker's trial run again, a server restart survived. Real
processes against a real throwaway server (conftest.pg_server)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import run_cli, run_in_process

FAST = ["--dataset", "digits", "--val-size", "300", "--dense-epochs", "2", "--no-references", "--quiet",
        "--budget-flops", "0.5", "--threads", "1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workers")


@pytest.fixture(scope="module")
def faults(pg_server, work) -> str:
    """A study whose trials last a few seconds, for the fault tests to stop workers in (they
    run in turn on it). Returns its name."""
    # 3 trials: the front space's three uniform warm starts are then done, and nothing is queued
    r = run_in_process("search", *FAST, "--finetune-steps", "300", "--trials", "3", "--storage", pg_server.url,
                       "--study", "faults", cwd=work)
    assert r.returncode == 0, r.stderr
    return "faults"


def trials_of(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).trials


def start_worker(url: str, study: str, work: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autoprune", "worker", "--storage", url, "--study", study,
                             "--quiet", *args], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def wait_for_running(url: str, study: str, proc: subprocess.Popen, timeout: float = 120) -> int:
    """The number of the first trial ``proc`` runs, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        running = [t for t in trials_of(url, study) if t.state.name == "RUNNING"]
        if running:
            return running[0].number
        time.sleep(0.2)
    raise AssertionError("the worker ran no trial")


def test_three_workers_lose_and_repeat_nothing(pg_server, work):
    """search --workers 3: the study is created first, then three processes share 9 trials.
    Every trial completes, none is left running, and no two have the same parameters (workers
    seeded alike used to repeat their random start-up trials in lockstep)."""
    r = run_cli("search", *FAST, "--finetune-steps", "20", "--trials", "9", "--workers", "3",
                "--storage", pg_server.url, "--study", "three", cwd=work)
    assert r.returncode == 0, r.stderr
    trials = trials_of(pg_server.url, "three")
    states = collections.Counter(t.state.name for t in trials)
    # workers still in a trial when the 9th completes finish it: up to 2 more
    assert set(states) == {"COMPLETE"} and 9 <= states["COMPLETE"] <= 11, states
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)
    workers = [t.user_attrs["worker"] for t in trials]
    assert len({w["pid"] for w in workers}) >= 2 and {w["index"] for w in workers} <= {0, 1, 2}
    assert all(w["threads"] == 1 for w in workers)  # --threads 1, as stored with each trial
    assert f"{states['COMPLETE']} trials fine-tuned" in r.stdout and "0 failed" in r.stdout


def test_a_killed_workers_trial_is_run_again(pg_server, work, faults):
    """SIGKILL a worker mid-trial: its trial stays RUNNING until its heartbeats are missed
    three times; the next worker then fails it, and runs a copy of it before anything else."""
    victim = start_worker(pg_server.url, faults, work, "--trials", "2", "--heartbeat", "1")
    killed = wait_for_running(pg_server.url, faults, victim)
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert trials_of(pg_server.url, faults)[killed].state.name == "RUNNING"  # nobody knows yet
    time.sleep(3.5)  # the grace period: 3 heartbeats of 1 s
    r = run_cli("worker", "--storage", pg_server.url, "--study", faults, "--trials", "1", "--heartbeat", "1",
                "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr
    trials = trials_of(pg_server.url, faults)
    assert trials[killed].state.name == "FAIL"
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state.name == "COMPLETE" and retry.params == trials[killed].params
    assert retry.number == killed + 1  # it ran first: no other trial came between
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


@pytest.mark.slow  # the same path runs in process in test_cli (test_ctrl_c_exits_130_...[SIGTERM])
def test_sigterm_queues_the_trial_in_flight_again(pg_server, work, faults):
    """SIGTERM (a scheduler stopping the job) is not SIGKILL: the worker fails its trial with a
    reason, queues a copy at once, and exits 143 with one line; the next worker runs the copy."""
    worker = start_worker(pg_server.url, faults, work, "--trials", "2")
    stopped = wait_for_running(pg_server.url, faults, worker)
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted; the trial in flight is queued again")
    trials = trials_of(pg_server.url, faults)
    assert trials[stopped].state.name == "FAIL"
    assert trials[stopped].user_attrs["reason"] == "interrupted (SIGTERM); queued again"
    (copy,) = [t for t in trials if t.system_attrs.get("failed_trial") == stopped]
    assert copy.state.name == "WAITING" and copy.params == trials[stopped].params
    r = run_cli("worker", "--storage", pg_server.url, "--study", faults, "--trials", "1", "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr
    assert trials_of(pg_server.url, faults)[copy.number].state.name == "COMPLETE"


def test_a_server_restart_loses_no_finished_trial(pg_server, work, faults):
    """The server goes down for 5 s while a worker trains: the worker waits (new connections,
    retries with backoff), stores every finished trial, and goes on."""
    before = collections.Counter(t.state.name for t in trials_of(pg_server.url, "faults"))
    worker = start_worker(pg_server.url, faults, work, "--trials", "3", "--heartbeat", "2", "--db-retry", "60")
    wait_for_running(pg_server.url, faults, worker)
    pg_server.restart(down_s=5)
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    assert "unreachable; retrying for up to 60 s" in err and "reachable again" in err
    after = collections.Counter(t.state.name for t in trials_of(pg_server.url, faults))
    assert after - before == {"COMPLETE": 3}, (before, after)


def test_a_long_outage_ends_with_one_line_and_the_study_intact(pg_server, work, faults):
    """Down for longer than --db-retry: exit 1, one line, and every trial stored before is kept."""
    before = collections.Counter(t.state.name for t in trials_of(pg_server.url, "faults"))
    worker = start_worker(pg_server.url, faults, work, "--trials", "3", "--db-retry", "3")
    wait_for_running(pg_server.url, faults, worker)
    pg_server.stop()
    try:
        _, err = worker.communicate(timeout=120)
    finally:
        pg_server.start()
    assert worker.returncode == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("autoprune worker: error: the database postgresql+psycopg2://")
    assert "unreachable for" in err
    after = collections.Counter(t.state.name for t in trials_of(pg_server.url, faults))
    assert after["COMPLETE"] >= before["COMPLETE"]  # what was stored before the outage is kept
