"""The study in every storage backend (SQLite; PostgreSQL when its server binaries are
installed), every sampler, and optuna-dashboard serving a study."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

import autoprune
from autoprune.testing import free_port


@pytest.fixture(scope="module")
def dense(digits_dense):
    return digits_dense


@pytest.fixture(scope="module")
def postgres(pg_server):
    return pg_server.url


def small_search(dense, storage: str, *, sampler: str = "tpe", trials: int = 2, study: str = "s", **options):
    model, task = dense
    return autoprune.search(
        model, (task.train.x, task.train.labels), (task.val.x, task.val.labels), task.example_input(),
        budget_flops=0.6, storage=storage, study=study, trials=trials, finetune_steps=2, sampler=sampler,
        progress=False, references=False, batch_size=64, threads=1, methods=["l1", "fpgm"], **options,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_study_round_trip_in_each_backend(backend, dense, tmp_path, request):
    url = f"sqlite:///{tmp_path}/s.db" if backend == "sqlite" else request.getfixturevalue("postgres")
    study = small_search(dense, url, study=f"rt-{backend}")
    again = optuna.load_study(study_name=f"rt-{backend}", storage=url)
    assert again.metric_names == ["accuracy", "flops"]
    assert again.user_attrs["autoprune"]["budget"]["flops"] == study.user_attrs["autoprune"]["budget"]["flops"]
    small_search(dense, url, trials=1, study=f"rt-{backend}")  # resume from a second "worker"
    done = [t for t in optuna.load_study(study_name=f"rt-{backend}", storage=url).trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    # a second search on a shared database samples as a worker of its own; on SQLite it stays seed + trials held
    assert all(t.user_attrs["worker"]["index"] is None for t in done[:2])
    resumed_index = done[2].user_attrs["worker"]["index"]
    assert (resumed_index is None) == (backend == "sqlite")


#: trials each sampler draws at random before its model takes over (see study.make_sampler)
STARTUP = {"tpe": 10, "nsga2": 16, "gp": 10}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_that_start_together_on_a_fresh_database_all_open_it(backend, tmp_path, request):
    """Optuna checks for its tables, then creates them: a process that loses that race to another
    used to end with "table studies already exists" (8 of 10 fresh SQLite files, 4 processes)."""
    import multiprocessing

    from autoprune.testing import open_at_once

    server = request.getfixturevalue("pg_server") if backend == "postgresql" else None
    ctx = multiprocessing.get_context("spawn")
    for i in range(3):
        url = f"sqlite:///{tmp_path}/fresh{i}.db" if server is None else server.database(f"fresh{i}")
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=open_at_once, args=(url, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        lines = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert lines == ["ok"] * 4, lines
        if backend == "sqlite":  # one version row and one Alembic stamp, not two
            import sqlite3

            with sqlite3.connect(f"{tmp_path}/fresh{i}.db") as db:
                assert db.execute("select count(*) from version_info").fetchone()[0] == 1
                assert db.execute("select count(*) from alembic_version").fetchone()[0] == 1


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "gp"])
def test_every_sampler_runs_past_its_startup_and_respects_the_budget(sampler, dense, tmp_path, monkeypatch):
    """Each sampler runs two trials beyond its random start-up phase, and those are proposed by
    its own model (``sample_relative`` returns parameters), not by the random fallback."""
    from autoprune.policy_search import study as studies

    proposed = []
    real = studies.make_sampler

    def spying(name, *, seed):
        made = real(name, seed=seed)
        inner = made.sample_relative

        def sample_relative(study, trial, space):
            params = inner(study, trial, space)
            proposed.append(trial.number if params else None)
            return params

        made.sample_relative = sample_relative
        return made

    monkeypatch.setattr(studies, "make_sampler", spying)
    # + 2 for the front space's two uniform warm starts below the budget: NSGA-II leaves enqueued
    # trials out of its first generation
    trials = STARTUP.get(sampler, 0) + 2 + 2
    model, task = dense
    study = autoprune.search(
        model, (task.train.x, task.train.labels), (task.val.x, task.val.labels), task.example_input(),
        budget_flops=0.6, storage=f"sqlite:///{tmp_path}/s.db", study="s", trials=trials, finetune_steps=0,
        sampler=sampler, progress=False, references=False, batch_size=64, threads=1, methods=["l1", "fpgm"], bn_batches=2,
    )
    budget = study.user_attrs["autoprune"]["budget"]["flops"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == trials and all(t.values[1] <= budget for t in done)
    assert type(study.sampler).__name__.lower().startswith({"tpe": "tpe", "nsga2": "nsgaii", "random": "random", "gp": "gp"}[sampler])
    modelled = [n for n in proposed if n is not None]
    if sampler == "random":
        assert not modelled
    else:  # the last trials, at least, came from the sampler's model
        assert modelled and max(modelled) == trials - 1 and min(modelled) >= STARTUP[sampler] - 1


def test_optuna_dashboard_serves_the_study(dense, tmp_path):
    small_search(dense, f"sqlite:///{tmp_path}/s.db", study="dash")
    port = free_port()
    proc = subprocess.Popen(["optuna-dashboard", f"sqlite:///{tmp_path}/s.db", "--port", str(port), "--host", "127.0.0.1",
                             "--artifact-dir", str(tmp_path / "s-artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        data = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    data = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert data is not None, "optuna-dashboard did not answer"
        (summary,) = data["study_summaries"]
        assert summary["study_name"] == "dash"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=5) as r:
            detail = json.loads(r.read())
        assert detail["objective_names"] == ["accuracy", "flops"]
        assert any(t["state"] == "Complete" and any(a["key"] == "policy" for a in t["user_attrs"]) for t in detail["trials"])
        # what autoprune adds for the dashboard: feasibility it can read, a note, two charts, policy.json artifacts
        # (with 2 trials, the front space's third warm start is still queued: only finished trials count)
        done = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert len(done) == 2 and all(t["constraints"] and all(c <= 0 for c in t["constraints"]) for t in done)
        assert "**Budget**" in detail["note"]["body"] and "autoprune apply" in detail["note"]["body"]
        assert re.search(r"\*\*Compute\*\*: [0-9.]+ dense epochs \([0-9.]+ in \d+ trials", detail["note"]["body"])
        titles = sorted(json.loads(g["graph_object"])["layout"]["title"]["text"] for g in detail["plotly_graph_objects"])
        assert titles == ["dash: search-val accuracy against FLOPs", "kept channels per group, the 2 best feasible trials"]
        for t in done:
            (artifact,) = t["artifacts"]
            assert artifact["filename"] == "policy.json"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/artifacts/{summary['study_id']}/{t['trial_id']}/"
                                        f"{artifact['artifact_id']}", timeout=5) as r:
                policy = json.loads(r.read())
            assert policy["format"] == "autoprune.policy" and policy["meta"]["min_channels"] == 4
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_fill_space_spends_the_whole_budget_in_every_trial(dense, tmp_path):
    """``--space fill``: per group a width and no spend level; the budget solve puts every
    trial just under the budget; the first trial is uniform at the budget (width 0 everywhere)."""
    study = small_search(dense, f"sqlite:///{tmp_path}/s.db", trials=3, study="fill", space="fill")
    budget = study.user_attrs["autoprune"]["budget"]["flops"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    for t in done:
        assert t.params and all(k.endswith((":width", ":method")) for k in t.params), t.params
        assert 0.8 * budget < t.values[1] <= budget
    for t in study.trials:  # the legacy list optuna-dashboard reads: feasible <= 0, over budget > 0
        assert (max(t.system_attrs["constraints"]) <= 0) == (t.state.name == "COMPLETE")
    assert done[0].user_attrs["warm_start"] == "uniform l1 at the budget"
    assert {v for k, v in done[0].params.items() if k.endswith(":width")} == {0}


@pytest.mark.slow
def test_the_dashboard_renders_in_headless_chromium(dense, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location("dashboard_check", Path(__file__).resolve().parents[1] / "scripts" / "dashboard_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    small_search(dense, f"sqlite:///{tmp_path}/s.db", study="shown", trials=3)
    found = check.check(f"sqlite:///{tmp_path}/s.db", str(tmp_path / "s-artifacts"), tmp_path / "shot.png")
    assert found["rendered"] == {"charts": True, "note": True, "policy_artifacts": True}
    assert found["trials_with_feasibility"] == found["trials"] == 3 == found["trials_with_policy_artifact"]
    assert (tmp_path / "shot.png").stat().st_size > 20_000


def test_front_space_spreads_trials_from_the_budget_down_to_the_floor(dense, tmp_path):
    """--space front: every trial is feasible, spends floor^(1 - s/8) of the budget for a
    sampled s, and the first one is uniform pruning at the budget."""
    from autoprune.policy_search.space import SPEND_STEPS

    study = small_search(dense, f"sqlite:///{tmp_path}/s.db", trials=8, study="front", space="front",
                         sampler="random", keep_min=0.125)
    budget = study.user_attrs["autoprune"]["budget"]["flops"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 8 and done[0].params["spend"] == SPEND_STEPS
    for t in done:
        fraction = 0.25 ** (1 - t.params["spend"] / SPEND_STEPS)
        assert 0.8 * fraction * budget <= t.values[1] <= fraction * budget * 1.001, (t.params["spend"], t.values[1])
    flops = [t.values[1] for t in done]
    assert max(flops) / min(flops) > 1.5  # a curve, not a cluster at the budget
