"""The CLI end to end, through a subprocess as a user runs it, on the digits task with a real
SQLite study; then the study is opened with plain Optuna. Plus every bad-input case."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import torch
from conftest import run_cli, run_in_process

FAST = ["--dataset", "digits", "--val-size", "300", "--dense-epochs", "4", "--finetune-steps", "15", "--no-references",
        "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """One real search shared by the tests of this module (digits, SmallCNN, 5 trials)."""
    work = tmp_path_factory.mktemp("cli")
    r = run_cli("search", "--budget-flops", "0.4", "--trials", "5", "--study", "digits-test", *FAST, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "Pareto front" in r.stdout and "optuna-dashboard sqlite:///studies/digits-test.db" in r.stdout
    return work


def load(work: Path) -> optuna.Study:
    return optuna.load_study(study_name="digits-test", storage=f"sqlite:///{work}/studies/digits-test.db")


def test_search_stores_a_real_multi_objective_study(searched):
    study = load(searched)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "flops"]
    info = study.user_attrs["autoprune"]
    assert info["config"]["model"] == "smallcnn" and info["config"]["dataset"] == "digits"
    budget, dense_flops = info["budget"]["flops"], info["dense"]["flops"]
    assert budget == int(0.4 * dense_flops)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 5
    for t in complete:
        assert t.constraints and all(v <= 0 for v in t.constraints.values())
        assert t.values[1] <= budget and t.user_attrs["flops"] == t.values[1]
        assert 0 <= t.values[0] <= 1 and t.user_attrs["accuracy"] == t.values[0]
        assert set(t.user_attrs["seconds"]) >= {"prune", "calibrate", "finetune", "evaluate", "measure", "total"}
        assert t.user_attrs["nonzeros"] <= t.user_attrs["params"]
        assert "accuracy_before_finetune" in t.user_attrs
        assert set(t.user_attrs["channels"]) == set(t.user_attrs["policy"]["groups"])
    # the default 'front' space solves every policy to its share of the budget: nothing is rejected
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 5
    assert complete[0].user_attrs.get("warm_start", "").startswith("uniform l1")
    assert (searched / "studies" / "digits-test" / "front.png").stat().st_size > 10_000
    # the dense baseline is cached for the next search
    assert len(list((searched / "studies" / "checkpoints").glob("digits-smallcnn-*.pt"))) == 1


def test_front_prints_table_and_writes_files(searched):
    r = run_in_process("front", "--study", "digits-test", "--format", "json", cwd=searched)
    assert r.returncode == 0, r.stderr
    front = json.loads(r.stdout)["front"]
    study = load(searched)
    best = max(t.values[0] for t in study.best_trials)
    assert max(row["accuracy"] for row in front) == best
    assert all(row["feasible"] for row in front)
    flops = [row["flops"] for row in front]
    assert flops == sorted(flops)
    r = run_in_process("front", "--study", "digits-test", cwd=searched)
    assert "feasible" in r.stdout and "dense" in r.stdout and "compute" in r.stdout.splitlines()[0]
    assert "0.00 in the reference curves" in r.stdout  # --no-references
    assert (searched / "studies" / "digits-test" / "front.csv").read_text().startswith("trial,feasible,accuracy")


def test_resume_adds_trials_to_the_same_study(searched):
    before = len(load(searched).trials)
    r = run_in_process("search", "--budget-flops", "0.4", "--trials", "1", "--study", "digits-test", *FAST, cwd=searched)
    assert r.returncode == 0, r.stderr
    study = load(searched)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 6 and len(study.trials) > before
    assert "training the dense" not in r.stderr  # baseline reused from the cache


def test_apply_best_exports_a_rebuildable_model(searched, tmp_path):
    r = run_cli("apply", "--study", "digits-test", "--best", "--finetune-steps", "30", "--out", str(tmp_path / "x"), cwd=searched)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "x" / "report.json").read_text())
    assert report["pruned"]["flops"] < report["dense"]["flops"]
    assert report["pruned"]["params"] < report["dense"]["params"]
    assert 0.2 < report["pruned"]["test_accuracy"] <= 1
    assert "| test accuracy |" in r.stdout
    # compute: the recovery's 30 steps of 128 images, forward and backward, at the pruned FLOPs, exactly
    compute = report["compute"]
    assert compute["apply"]["flops"]["train"] == 30 * 128 * 3 * report["pruned"]["flops"]
    assert compute["apply"]["flops"]["forward"] >= 360 * report["pruned"]["flops"]  # the 360 test images at least
    assert compute["search"]["trials"] >= 5 and compute["search"]["flops"]["references"] == 0  # --no-references
    assert compute["search"]["dense_epochs"]["total"] > 0
    assert "Compute, in dense epochs" in (tmp_path / "x" / "report.md").read_text()
    # rebuild from the dense checkpoint + policy.json + model.pt, without unpickling
    from autoprune.core.checkpoints import load_weights
    from autoprune.ship.apply import load_pruned
    from autoprune.task.models import build_model

    dense_ckpt = next((searched / "studies" / "checkpoints").glob("*.pt"))
    torch.manual_seed(0)
    dense = build_model("smallcnn", num_classes=10, in_channels=1, input_size=8)
    load_weights(dense, dense_ckpt)
    model = load_pruned(dense, tmp_path / "x" / "policy.json", tmp_path / "x" / "model.pt")
    from autoprune.core.loops import evaluate
    from autoprune.core.measure.flops import count_flops
    from autoprune.task.splits import load_task

    task = load_task("digits", val_size=300)
    assert evaluate(model, task.test) == report["pruned"]["test_accuracy"]
    assert count_flops(model, task.example_input()) == report["pruned"]["flops"]
    # model.onnx, dynamic batch: onnxruntime gives PyTorch's logits and top-1 on any batch size
    import numpy as np
    import onnx

    from autoprune.core.measure import onnx as onnx_export

    onnx_file = tmp_path / "x" / "model.onnx"
    assert report["onnx"]["check"]["max_abs_logit_difference"] < 1e-4 and report["onnx"]["check"]["same_top1"]
    assert onnx.load(str(onnx_file)).opset_import[0].version >= 17
    sess = onnx_export.session(onnx_file)
    for n in (1, 7):
        with torch.no_grad():
            expected = model(task.test.x[:n]).numpy()
        got = onnx_export.run(sess, task.test.x[:n])
        assert got.shape == (n, 10) and np.abs(got - expected).max() < 1e-4
    lat = report["onnx"]["latency_ms"]
    assert set(lat) == {"pytorch, batch 1", "pytorch, batch 64", "onnxruntime, batch 1", "onnxruntime, batch 64"}
    assert all(v["dense"] > 0 and v["pruned"] > 0 for v in lat.values())
    assert "| onnxruntime, batch 64 |" in (tmp_path / "x" / "report.md").read_text()


def test_apply_quantize_int8_writes_a_smaller_model_with_its_accuracy(searched, tmp_path, monkeypatch):
    from autoprune.cli import main

    monkeypatch.chdir(searched)
    assert main(["apply", "--study", "digits-test", "--best", "--finetune-steps", "10", "--quantize", "int8",
                 "--quiet", "--out", str(tmp_path / "q")]) == 0
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    q = report["onnx"]["int8"]
    assert (tmp_path / "q" / "model.int8.onnx").stat().st_size == q["bytes"] < report["onnx"]["bytes"]
    # int8 costs a little accuracy on this tiny task, never most of it
    assert report["pruned"]["test_accuracy"] - 0.15 <= q["test_accuracy"] <= 1


def test_apply_policy_file_and_script(searched, tmp_path):
    study = load(searched)
    trial = study.best_trials[0]
    (tmp_path / "p.json").write_text(json.dumps(trial.user_attrs["policy"]))
    r = run_in_process("apply", "--study", "digits-test", "--policy", str(tmp_path / "p.json"), "--finetune-steps", "5",
                "--out", str(tmp_path / "y"), "--quiet", "--no-onnx", cwd=searched)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "y" / "report.json").read_text())["pruned"]["flops"] == trial.values[1]
    script = Path(__file__).resolve().parents[1] / "scripts" / "apply_best_policy.py"
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(script), "--storage", "sqlite:///studies/digits-test.db",
                        "--finetune-steps", "5", "--out", str(tmp_path / "z"), "--quiet", "--no-onnx"],
                       cwd=searched, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "z" / "policy.json").exists() and (tmp_path / "z" / "model.pt").exists()


# --------------------------------------------------------------------------- bad input
BAD = [
    (["--model", "resnet21"], "unknown model 'resnet21'; valid choices:"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid choices: cifar10, digits, fashion-mnist, imagefolder"),
    (["--methods", "l1,l3"], "unknown importance method 'l3'; valid choices: activation, fpgm, l1, l2, random, taylor, unstructured"),
    (["--sampler", "cmaes"], "unknown sampler 'cmaes'; valid choices: gp, nsga2, random, tpe"),
    (["--space", "wide"], "unknown search space 'wide'; valid choices: fill, front, local"),
    (["--storage", "nosuchdb://x"], "cannot open storage 'nosuchdb://x'"),
    (["--checkpoint", "BADCKPT"], "corrupt.pt is not a PyTorch checkpoint"),
    (["--budget-flops", "0.01"], "is below the smallest this search space reaches"),
    (["--budget-flops", "half"], "--budget-flops 'half' is not a number"),
    (["--methods", "unstructured"], "is below the smallest this search space reaches"),  # sparsity keeps FLOPs
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[a[0] for a, _ in BAD])
def test_bad_search_input_exits_2_with_message(tmp_path, monkeypatch, capsys, args, message):
    """In-process through the CLI entry point (each subprocess costs ~5 s of imports)."""
    from autoprune.cli import main

    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    args = [a.replace("BADCKPT", str(tmp_path / "corrupt.pt")) for a in args]
    if "--budget-flops" not in args:
        args += ["--budget-flops", "0.5"]
    monkeypatch.chdir(tmp_path)
    assert main(["search", *FAST, *args]) == 2  # later flags win
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "studies").exists()  # refused before any training or storage


def test_bad_input_in_a_real_process_is_one_line_and_exit_2(tmp_path):
    r = run_cli("search", "--budget-flops", "0.5", "--model", "resnet21", cwd=tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "unknown model 'resnet21'; valid choices:" in r.stderr and "Did you mean 'resnet20'" in r.stderr


def test_missing_dataset_says_how_to_get_it(tmp_path):
    (tmp_path / "offline.toml").write_text("download = false\n")  # a config key: no flag for it
    r = run_in_process("search", "--budget-flops", "0.5", "--data-root", str(tmp_path), "--config", "offline.toml",
                       "--quiet", cwd=tmp_path,
                env={"AUTOPRUNE_DATASET_DIRS": str(tmp_path / "none")})
    assert r.returncode == 2 and "Fashion-MNIST not found" in r.stderr and "apt-get install dataset-fashion-mnist" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_failing_run_leaves_the_stored_study_intact(searched):
    db = searched / "studies" / "digits-test.db"
    before = db.read_bytes()
    # a different budget for an existing study is refused before anything is written
    r = run_in_process("search", "--budget-flops", "0.3", "--study", "digits-test", *FAST, cwd=searched)
    assert r.returncode == 2 and "exists with a different setup (budget_flops: stored '0.4', now '0.3')" in r.stderr
    r = run_in_process("search", "--budget-flops", "0.4", "--study", "digits-test", "--sampler", "nope", *FAST, cwd=searched)
    assert r.returncode == 2
    assert db.read_bytes() == before
    assert len(load(searched).trials) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["front", "--study", "nope"], "no study database at sqlite:///studies/nope.db"),
        (["apply", "--study", "digits-test", "--trial", "999"], "trial 999 is not a completed trial"),
        (["apply", "--study", "digits-test", "--policy", "CORRUPT"], "is not valid JSON"),
        (["front", "--storage", "sqlite:///studies/digits-test.db", "--study", "other"], "unknown study"),
    ],
)
def test_bad_front_and_apply_input(searched, tmp_path, monkeypatch, capsys, args, message):
    from autoprune.cli import main

    (tmp_path / "c.json").write_text("{oops")
    args = [a.replace("CORRUPT", str(tmp_path / "c.json")) for a in args]
    monkeypatch.chdir(searched)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_config_file(tmp_path, monkeypatch, capsys):
    from autoprune.cli import main

    (tmp_path / "bad.toml").write_text('budget_flops = 0.5\nmodle = "smallcnn"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--config", "bad.toml"]) == 2
    assert "bad.toml: unknown key(s) ['modle']; valid keys:" in capsys.readouterr().err
    for name in ("fashion-mnist.toml", "resnet20-fashion-mnist.toml"):
        from autoprune.task.config import SearchConfig

        config = SearchConfig.from_sources(toml_path=str(Path(__file__).resolve().parents[1] / "studies" / name))
        assert config.dataset == "fashion-mnist" and config.budget_flops in ("0.5", "0.4")


def test_sensitivity_command_and_sensitivity_warm_start(searched, monkeypatch, capsys):
    from autoprune.cli import main

    monkeypatch.chdir(searched)  # the dense baseline is cached there by the search above
    assert main(["sensitivity", *FAST, "--budget-flops", "0.4", "--study", "sens"]) == 0
    out = capsys.readouterr().out
    assert "search-val accuracy after pruning one group" in out and "policy for" in out
    result = json.loads((searched / "studies" / "sens" / "sensitivity.json").read_text())
    assert len(result["groups"]) == 5 and (searched / "studies" / "sens" / "sensitivity.png").exists()
    assert result["method"] == "l1"
    # without l1 in the search, the analysis uses the method the warm start and the local space use
    assert main(["sensitivity", *FAST, "--methods", "fpgm,l2", "--study", "sens-fpgm"]) == 0
    assert json.loads((searched / "studies" / "sens-fpgm" / "sensitivity.json").read_text())["method"] == "fpgm"

    assert main(["search", *FAST, "--budget-flops", "0.4", "--trials", "2", "--study", "ws",
                 "--warm-start", "uniform,sensitivity"]) == 0
    study = optuna.load_study(study_name="ws", storage=f"sqlite:///{searched}/studies/ws.db")
    starts = [t.user_attrs.get("warm_start", "") for t in study.trials[:2]]
    assert starts[0].startswith("uniform l1") and starts[1] == "sensitivity l1"
    assert "sensitivity" in study.user_attrs


def test_local_space_searches_around_the_sensitivity_policy_and_resumes_around_it(searched, monkeypatch):
    from autoprune.cli import main
    from autoprune.core import sensitivity

    monkeypatch.chdir(searched)
    args = [*FAST, "--budget-flops", "0.4", "--study", "local", "--space", "local"]
    assert main(["search", *args, "--trials", "2"]) == 0
    study = optuna.load_study(study_name="local", storage=f"sqlite:///{searched}/studies/local.db")
    anchor = study.user_attrs["anchor"]
    assert "sensitivity" in study.user_attrs and len(anchor) == 5
    first, second = study.trials[:2]
    assert first.user_attrs["warm_start"] == "sensitivity l1 (the anchor)"
    assert second.user_attrs["warm_start"].startswith("uniform l1 at the budget (nearest")
    assert {k: v for k, v in first.params.items() if k.endswith(":width")} == {f"{g}:width": 0 for g in anchor}
    keeps = {g: c["keep"] for g, c in first.user_attrs["policy"]["groups"].items()}
    ratios = [keeps[g] / anchor[g] for g in anchor if 0.25 < keeps[g] < 1.0]
    assert ratios and max(ratios) == pytest.approx(min(ratios), rel=1e-3)  # the anchor, scaled to the budget
    assert first.values[1] <= study.user_attrs["autoprune"]["budget"]["flops"]

    # resuming reads the stored anchor: no new analysis, even with the cache gone
    for f in (searched / "studies" / "checkpoints").glob("sensitivity-*.json"):
        f.unlink()
    monkeypatch.setattr(sensitivity, "analyse", lambda *a, **k: pytest.fail("the anchor was derived again"))
    assert main(["search", *args, "--trials", "1"]) == 0
    study = optuna.load_study(study_name="local", storage=f"sqlite:///{searched}/studies/local.db")
    assert len(study.trials) == 3 and study.user_attrs["anchor"] == anchor


def test_local_space_without_an_anchor_is_refused_and_stores_nothing(searched, monkeypatch, capsys):
    from autoprune.cli import main
    from autoprune.core import sensitivity

    monkeypatch.chdir(searched)
    monkeypatch.setattr(sensitivity, "derived_policy", lambda *a, **k: None)
    assert main(["search", *FAST, "--budget-flops", "0.4", "--study", "noanchor", "--space", "local",
                 "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "no policy to search around" in err and "--space fill" in err and "Traceback" not in err
    assert "noanchor" not in [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{searched}/studies/noanchor.db")]


def test_confirm_rescores_the_top_trials_as_apply_recovers_them(searched, tmp_path, monkeypatch, capsys):
    """``confirm`` recovers the top trials as ``apply`` would and scores them on search-val;
    a second run repeats nothing; ``apply --best`` then takes the best confirmed trial, at the
    largest step count confirmed. Worked on a copy of the study, so the tests above keep theirs."""
    import shutil

    from autoprune.cli import main
    from autoprune.core.checkpoints import load_weights
    from autoprune.core.loops import evaluate
    from autoprune.policy_search import study as studies
    from autoprune.ship.apply import choose_trial, load_pruned
    from autoprune.task.models import build_model
    from autoprune.task.splits import load_task

    (tmp_path / "studies").mkdir()
    shutil.copy(searched / "studies" / "digits-test.db", tmp_path / "studies" / "digits-test.db")
    monkeypatch.chdir(tmp_path)
    args = ["confirm", "--study", "digits-test", "--top", "2", "--steps", "20", "--seeds", "2", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "confirmed (20 steps)" in out and "best confirmed: trial" in out
    study = load(tmp_path)
    feasible = sorted((t for t in studies.completed(study) if studies.is_feasible(t)),
                      key=lambda t: (-t.values[0], t.values[1], t.number))
    top2 = [t.number for t in feasible[:2]]
    stored = {k: v["runs"] for k, v in study.user_attrs.items() if k.startswith("confirm:")}
    assert sorted(stored) == sorted(f"confirm:{n}" for n in top2)
    for runs in stored.values():
        assert [(r["steps"], r["seed"]) for r in runs] == [(20, 0), (20, 1)]
        assert all(0 < r["accuracy"] <= 1 and r["seconds"] >= 0 for r in runs)
    # each run is charged (20 steps of 128 images, forward and backward, and more) and counts in the search's compute
    from autoprune.policy_search.front import compute_spent

    flops = {t.number: t.values[1] for t in study.trials if t.state.name == "COMPLETE"}
    for key, runs in stored.items():
        assert all(r["compute_flops"] > 20 * 128 * 3 * flops[int(key.split(":")[1])] for r in runs)
    assert compute_spent(study)["flops"]["confirm"] == sum(r["compute_flops"] for rs in stored.values() for r in rs)
    # the seed-0 run is the model apply exports for the same steps, scored on search-val
    n = top2[0]
    assert main(["apply", "--study", "digits-test", "--trial", str(n), "--finetune-steps", "20", "--quiet",
                 "--no-onnx", "--out", str(tmp_path / "x")]) == 0
    dense = build_model("smallcnn", num_classes=10, in_channels=1, input_size=8)
    load_weights(dense, next((searched / "studies" / "checkpoints").glob("*.pt")))
    model = load_pruned(dense, tmp_path / "x" / "policy.json", tmp_path / "x" / "model.pt")
    task = load_task("digits", val_size=300)
    assert evaluate(model, task.val) == stored[f"confirm:{n}"][0]["accuracy"]
    # resumed: nothing is run again, nothing is lost
    assert main(args) == 0
    assert {k: v["runs"] for k, v in load(tmp_path).user_attrs.items() if k.startswith("confirm:")} == stored
    # --best follows the confirmed scores, compared only at the largest step count confirmed
    mean = {int(k.split(":")[1]): sum(r["accuracy"] for r in v) / 2 for k, v in stored.items()}
    assert choose_trial(load(tmp_path), None).number == max(mean, key=lambda n: (mean[n], -n))
    worst = feasible[-1].number
    study.set_user_attr(f"confirm:{worst}", {"runs": [{"steps": 10, "seed": 0, "accuracy": 1.0, "seconds": 0.0}]})
    assert choose_trial(load(tmp_path), None).number != worst  # 10 steps do not outrank 20
    study.set_user_attr(f"confirm:{worst}", {"runs": [{"steps": 40, "seed": 0, "accuracy": 0.5, "seconds": 0.0}]})
    assert choose_trial(load(tmp_path), None).number == worst  # the only trial confirmed at 40 steps


@pytest.mark.parametrize(("args", "message"), [
    (["--trials", "999"], "trial 999 is not a completed feasible trial of 'digits-test'; valid trials: "),
    (["--trials", "1,x"], "--trials: 'x' is not a trial number"),
    (["--steps", "0"], "--steps 0 must be at least 1"),
    (["--top", "0"], "--top 0 must be at least 1"),
])
def test_bad_confirm_input_exits_2_and_stores_nothing(searched, monkeypatch, capsys, args, message):
    from autoprune.cli import main

    monkeypatch.chdir(searched)
    assert main(["confirm", "--study", "digits-test", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not [k for k in load(searched).user_attrs if k.startswith("confirm:")]


# --------------------------------------------------------------------------- options the README promises
def test_params_objective_and_params_budget(searched, monkeypatch):
    """--params-objective adds a third objective; --budget-params is a second constraint:
    trials over it are rejected before training, with the reason."""
    from autoprune.cli import main

    monkeypatch.chdir(searched)
    assert main(["search", *FAST, "--budget-flops", "0.4", "--budget-params", "0.45", "--params-objective",
                 "--trials", "3", "--study", "params"]) == 0
    study = optuna.load_study(study_name="params", storage=f"sqlite:///{searched}/studies/params.db")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "flops", "params"]
    info = study.user_attrs["autoprune"]
    limit = info["budget"]["params"]
    assert limit == int(0.45 * info["dense"]["params"])
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    for t in complete:
        assert t.values[2] == t.user_attrs["params"] <= limit
        assert {"flops", "params"} <= set(t.constraints) and all(v <= 0 for v in t.constraints.values())
    for t in (t for t in study.trials if t.state.name == "PRUNED"):
        assert t.user_attrs["feasible"] is False and "params" in t.user_attrs["reason"]
        assert t.constraints["params"] > 0 and t.values is None


def test_timeout_stops_starting_trials(searched, monkeypatch):
    from autoprune.cli import main

    monkeypatch.chdir(searched)
    assert main(["search", *FAST, "--budget-flops", "0.4", "--trials", "10000", "--timeout", "2",
                 "--study", "timeout"]) == 0
    study = optuna.load_study(study_name="timeout", storage=f"sqlite:///{searched}/studies/timeout.db")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert 1 <= len(done) < 10000 and len(study.trials) == len(done)


def break_finetune(monkeypatch, on_call: int, exc: BaseException) -> None:
    """The ``on_call``-th fine-tune of a search raises ``exc`` (Ctrl-C, or a crash inside a trial)."""
    from autoprune.policy_search import objective

    calls = []
    real = objective.finetune

    def finetune(*args, **kwargs):
        calls.append(1)
        if len(calls) == on_call:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "finetune", finetune)


@pytest.mark.parametrize("signal_name", ["Ctrl-C", "SIGTERM"])
def test_ctrl_c_exits_130_and_keeps_the_finished_trials(searched, monkeypatch, capsys, signal_name):
    from autoprune.cli import main
    from autoprune.policy_search.interrupts import Terminated

    monkeypatch.chdir(searched)
    study_name = f"ctrlc-{signal_name}"
    # the interrupt during the third trial's fine-tune
    break_finetune(monkeypatch, 3, Terminated() if signal_name == "SIGTERM" else KeyboardInterrupt())
    code = main(["search", *FAST, "--budget-flops", "0.4", "--trials", "5", "--study", study_name])
    assert code == (143 if signal_name == "SIGTERM" else 130)
    err = capsys.readouterr().err
    assert "interrupted; the trial in flight is queued again" in err and "Traceback" not in err
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{searched}/studies/{study_name}.db")
    # the interrupted trial failed with its reason, and a copy of it waits for the next run
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]
    assert study.trials[2].user_attrs["reason"] == f"interrupted ({signal_name}); queued again"
    assert study.trials[3].params == study.trials[2].params and study.trials[3].system_attrs["failed_trial"] == 2
    monkeypatch.undo()
    monkeypatch.chdir(searched)
    assert main(["search", *FAST, "--budget-flops", "0.4", "--trials", "1", "--study", study_name]) == 0
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{searched}/studies/{study_name}.db")
    assert study.trials[3].state.name == "COMPLETE" and "reason" not in study.trials[3].user_attrs


def test_apply_refuses_a_dense_checkpoint_that_changed(searched, tmp_path, monkeypatch, capsys):
    """The study stores the dense checkpoint's sha256: a changed file is refused, not used."""
    import shutil

    from autoprune.cli import main
    from autoprune.core.checkpoints import load_state_dict

    (tmp_path / "studies").mkdir()
    shutil.copy(searched / "studies" / "digits-test.db", tmp_path / "studies" / "digits-test.db")
    study = load(tmp_path)
    info = study.user_attrs["autoprune"]
    state = load_state_dict(Path(info["dense"]["checkpoint"]))
    next(iter(state.values())).add_(1.0)  # one weight tensor changed, same shapes
    torch.save({"state_dict": state}, tmp_path / "dense.pt")
    study.set_user_attr("autoprune", {**info, "dense": {**info["dense"], "checkpoint": str(tmp_path / "dense.pt")}})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty-store").mkdir()
    assert main(["apply", "--study", "digits-test", "--best", "--finetune-steps", "1", "--quiet",
                 "--artifact-dir", str(tmp_path / "empty-store")]) == 2
    err = capsys.readouterr().err
    assert "dense.pt (changed since the search: sha256 differs)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "studies" / "digits-test").exists()  # nothing exported
    # the study's artifact store holds the checkpoint it was searched on: fetched by sha256, and used
    assert main(["apply", "--study", "digits-test", "--best", "--finetune-steps", "1", "--no-onnx", "--quiet"]) == 0
    assert "fetched the dense checkpoint from the artifact store" in capsys.readouterr().err


def test_front_as_csv(searched, monkeypatch, capsys):
    import csv
    import io

    from autoprune.cli import main

    monkeypatch.chdir(searched)
    assert main(["front", "--study", "digits-test", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    study = load(searched)
    front = sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0]))
    assert [int(r["trial"]) for r in rows] == [t.number for t in front]
    for r, t in zip(rows, front):
        assert float(r["accuracy"]) == t.values[0] and int(r["flops"]) == t.values[1]
        assert int(r["params"]) == t.user_attrs["params"] and r["feasible"] == "True"


# --------------------------------------------------------------------------- the user's own code and files
def test_a_failed_trial_is_stored_with_its_reason_and_the_summary_matches_front(searched, monkeypatch, capsys):
    from autoprune.cli import main

    monkeypatch.chdir(searched)
    break_finetune(monkeypatch, 2, IndexError("index 16 is out of bounds for dimension 0 with size 16"))
    assert main(["search", *FAST, "--budget-flops", "0.4", "--trials", "3", "--study", "fails"]) == 0
    out = capsys.readouterr().out
    assert "failed trial(s) 1: failed: IndexError: index 16 is out of bounds" in out
    study = optuna.load_study(study_name="fails", storage=f"sqlite:///{searched}/studies/fails.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].user_attrs["reason"].startswith("failed: IndexError")
    summary = [line.split()[0] for line in out.split("Pareto front")[1].splitlines()[3:] if line.strip()[:1].isdigit()]
    assert main(["front", "--study", "fails"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[3:] if line.strip()[:1].isdigit()]
    assert summary and summary == listed


USER_ERRORS = [
    (["--model", "user_models:raising_factory"], "model factory 'user_models:raising_factory' raised ValueError: my factory is broken"),
    (["--model", "user_models:flat_mlp"], "model 'user_models:flat_mlp' fails on the task's input of shape (1, 8, 8): RuntimeError"),
    (["--model", "densenet121"], "the input (1, 8, 8) is too small for DenseNet"),
    (["--model", "shufflenet_v2_x0_5"], "Torch-Pruning 1.6 cannot trace ShuffleNetV2"),
]


@pytest.mark.parametrize(("args", "message"), USER_ERRORS, ids=[a[1] for a, _ in USER_ERRORS])
def test_errors_from_the_users_code_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    from autoprune.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["search", *FAST, "--budget-flops", "0.5", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["search", *FAST, "--budget-flops", "0.5", "--debug", *args]) == 2
    assert "Traceback" in capsys.readouterr().err  # --debug shows where it came from


def test_errors_from_the_users_files_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import gzip
    import pickle

    from PIL import Image

    from autoprune.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOPRUNE_DATASET_DIRS", str(tmp_path / "none"))

    def fails(*args: str) -> str:
        assert main(["search", "--budget-flops", "0.5", "--quiet", "--threads", "1", "--dense-epochs", "1", *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return err

    fm = tmp_path / "fm"
    fm.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (fm / f"{name}.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + (4).to_bytes(4, "big") + b"abcd")[:-6])
    (tmp_path / "offline.toml").write_text("download = false\n")
    err = fails("--dataset", "fashion-mnist", "--data-root", str(fm), "--config", str(tmp_path / "offline.toml"))
    assert "cannot read" in err and "a corrupt or truncated file?" in err

    cifar = tmp_path / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(pickle.dumps({b"data": [1, 2, 3], b"labels": [0]})[:-5])
    assert "cannot read CIFAR-10 batch" in fails("--dataset", "cifar10", "--data-root", str(cifar.parent))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    assert "refusing to load builtins.print" in fails("--dataset", "cifar10", "--data-root", str(cifar.parent))

    images = tmp_path / "photos"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (images / split / cls).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(images / split / cls / f"{i}.png")
    (images / "train" / "a" / "3.png").write_bytes(b"not an image")
    err = fails("--dataset", "imagefolder", "--data-root", str(images), "--image-size", "16", "--val-size", "2",
                "--data-workers", "0")
    assert "cannot read" in err and "3.png" in err


def test_search_and_apply_on_an_image_folder_read_per_batch(tmp_path, monkeypatch, capsys):
    """ImageFolder photos at their own resolution, through DataLoader workers, end to end."""
    from test_data import make_imagefolder

    from autoprune.cli import main

    make_imagefolder(tmp_path / "photos", 24, size=40)
    monkeypatch.chdir(tmp_path)
    common = ["--dataset", "imagefolder", "--data-root", str(tmp_path / "photos"), "--image-size", "32",
              "--data-workers", "2", "--threads", "1", "--quiet", "--study", "photos"]
    assert main(["search", *common, "--budget-flops", "0.5", "--trials", "2", "--dense-epochs", "1",
                 "--finetune-steps", "3", "--batch-size", "8"]) == 0
    study = load_study_named(tmp_path, "photos")
    info = study.user_attrs["autoprune"]
    assert info["input_shape"] == [3, 32, 32] and info["config"]["val_size"] == 4  # 10% of 48 images
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert main(["apply", "--study", "photos", "--best", "--finetune-steps", "2", "--quiet", "--no-onnx",
                 "--out", str(tmp_path / "x")]) == 0
    report = json.loads((tmp_path / "x" / "report.json").read_text())
    assert report["pruned"]["flops"] < report["dense"]["flops"] and 0 <= report["pruned"]["test_accuracy"] <= 1


def load_study_named(work: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{work}/studies/{name}.db")


def test_progressive_pruning_reaches_the_same_architecture_in_k_steps(searched, tmp_path, monkeypatch):
    """apply --steps 3: three rounds of pruning, fine-tuning between them (the same total steps);
    the network has the one-shot policy's channel counts and rebuilds from policy.json."""
    from autoprune.cli import main
    from autoprune.core import loops as train
    from autoprune.core.checkpoints import load_weights
    from autoprune.core.loops import evaluate
    from autoprune.ship.apply import load_pruned
    from autoprune.task.models import build_model
    from autoprune.task.splits import load_task

    monkeypatch.chdir(searched)
    steps = []
    real = train.finetune
    monkeypatch.setattr(train, "finetune", lambda *a, **k: steps.append(k["steps"]) or real(*a, **k))
    for k, out in ((1, "one"), (3, "three")):
        assert main(["apply", "--study", "digits-test", "--best", "--finetune-steps", "31", "--steps", str(k),
                     "--no-onnx", "--quiet", "--out", str(tmp_path / out)]) == 0
    assert steps == [31, 10, 10, 11]
    one, three = (json.loads((tmp_path / o / "policy.json").read_text())["groups"] for o in ("one", "three"))
    assert {g: c["kept"] for g, c in one.items()} == {g: c["kept"] for g, c in three.items()}
    report = json.loads((tmp_path / "three" / "report.json").read_text())
    assert report["prune_steps"] == 3 and report["pruned"]["flops"] == json.loads(
        (tmp_path / "one" / "report.json").read_text())["pruned"]["flops"]
    dense = build_model("smallcnn", num_classes=10, in_channels=1, input_size=8)
    load_weights(dense, next((searched / "studies" / "checkpoints").glob("*.pt")))
    model = load_pruned(dense, tmp_path / "three" / "policy.json", tmp_path / "three" / "model.pt")
    assert evaluate(model, load_task("digits", val_size=300).test) == report["pruned"]["test_accuracy"]


def test_a_search_can_prune_progressively(searched, monkeypatch):
    from autoprune.cli import main

    monkeypatch.chdir(searched)
    assert main(["search", *FAST, "--budget-flops", "0.4", "--trials", "2", "--prune-steps", "2",
                 "--study", "progressive"]) == 0
    study = load_study_named(searched, "progressive")
    budget = study.user_attrs["autoprune"]["budget"]["flops"]
    for t in study.trials:
        assert t.state.name == "COMPLETE" and t.user_attrs["prune_steps"] == 2 and t.values[1] <= budget
        assert all(len(g["kept_indices"]) == g["kept"] for g in t.user_attrs["policy"]["groups"].values())


def test_reference_curves_are_measured_once_per_dense_model_and_shown_with_the_hypervolume(searched, monkeypatch, capsys):
    """Uniform L1 and global magnitude at FLOPs levels from the budget down to a quarter of it
    (those the space reaches), with the trials' fine-tune: stored in the study, printed by search and front with
    each curve's hypervolume next to the front's, drawn in front.png, and cached: a second
    study of the same dense model does not measure them again."""
    from autoprune.cli import main
    from autoprune.policy_search import reference

    monkeypatch.chdir(searched)
    args = [a for a in FAST if a != "--no-references"]
    assert main(["search", *args, "--budget-flops", "0.4", "--trials", "2", "--study", "refs"]) == 0
    out = capsys.readouterr().out
    assert "reference curves (the trials' recovery: 15 fine-tune steps):" in out and "hypervolume (reference point" in out
    assert re.search(r"compute: [0-9.]+ dense epochs \([0-9.]+ in \d+ trials, [0-9.]+ in the reference curves", out), out
    study = load_study_named(searched, "refs")
    budget = study.user_attrs["autoprune"]["budget"]["flops"]
    curves = study.user_attrs["references"]["curves"]
    assert set(curves) == {"uniform L1", "global magnitude"}
    reachable = [t for t in reference.levels(budget, 0.25) if t >= study.user_attrs["autoprune"]["budget"]["min_flops"]]
    assert len(reachable) >= 2  # levels below what the space reaches are left out
    for points in curves.values():
        assert [p["target"] for p in points] == reachable
        assert all(p["flops"] <= p["target"] and 0 <= p["accuracy"] <= 1 for p in points)
    assert main(["front", "--study", "refs", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    # each point's recovery is charged: 15 steps of 128 images, forward and backward, at its FLOPs, and more
    assert all(p["compute_flops"] > 15 * 128 * 3 * p["flops"] for points in curves.values() for p in points)
    spent = shown["compute"]["flops"]
    assert spent["references"] == sum(p["compute_flops"] for points in curves.values() for p in points)
    assert spent["total"] == spent["references"] + spent["trials"] > spent["references"]
    assert shown["references"] == curves and set(shown["hypervolume"]) == {"reference_point", "front", *curves}
    assert shown["hypervolume"]["reference_point"] == {"accuracy": 0.0, "flops": budget}
    assert 0 < shown["hypervolume"]["front"] < 1
    # the front beside each reference point: its best trial within 1% of the point's FLOPs; with 2 trials,
    # those are the uniform warm starts at the budget and at half of it
    trials = {t.number: t for t in study.trials if t.state.name == "COMPLETE"}
    assert len(shown["against_references"]) == sum(len(p) for p in curves.values())
    for row in shown["against_references"]:
        under = [t for t in trials.values() if t.values[1] <= row["flops"] * 1.01]
        assert row["front"] == max(t.values[0] for t in under) and row["trial"] in {t.number for t in under}
    assert [trials[n].user_attrs["warm_start"] for n in sorted(trials)] == ["uniform l1 at the budget",
                                                                         "uniform l1 at 0.5 of the budget"]
    monkeypatch.setattr(reference, "recover_model", lambda *a, **k: pytest.fail("measured again"))
    assert main(["search", *args, "--budget-flops", "0.4", "--trials", "1", "--study", "refs-again"]) == 0
    assert load_study_named(searched, "refs-again").user_attrs["references"]["curves"] == curves


def test_hypervolume_by_hand():
    from autoprune.policy_search.reference import hypervolume

    assert hypervolume([(1.0, 0.0)], max_flops=100) == 1.0
    assert hypervolume([(0.5, 50)], max_flops=100) == 0.25
    assert hypervolume([(0.5, 50), (0.8, 90)], max_flops=100) == pytest.approx(0.25 + 0.3 * 0.1)
    assert hypervolume([(0.5, 50), (0.4, 90), (0.9, 200)], max_flops=100) == 0.25  # dominated, over the reference


def test_an_interrupt_lost_in_a_finaliser_is_sent_again():
    """Python drops a KeyboardInterrupt raised inside a finaliser ("Exception ignored"); the
    CLI's handler sends the signal again until the interrupt is handled."""
    import os
    import signal
    import time

    from autoprune.policy_search import interrupts

    before = signal.getsignal(signal.SIGINT)
    previous = interrupts.install()
    try:
        class Swallow:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)  # the handler's KeyboardInterrupt is raised here, inside __del__, and lost

        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            Swallow()  # dropped at once
            time.sleep(10)  # the repeat comes within 2 s
        interrupts.acknowledge()
        assert time.monotonic() - t0 < 5
    finally:
        interrupts.restore(previous)
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_the_dense_checkpoint_travels_through_an_s3_artifact_store(tmp_path, monkeypatch):
    """--artifact-dir s3://bucket (moto's in-process S3): the search puts the dense checkpoint
    and the trials' policy.json there; apply on a "machine" without the checkpoint file fetches
    it by sha256 and exports."""
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="ap-artifacts")
        here, there = tmp_path / "here", tmp_path / "there"
        here.mkdir()
        r = run_in_process("search", *FAST, "--budget-flops", "0.5", "--trials", "2", "--study", "s3",
                           "--artifact-dir", "s3://ap-artifacts", cwd=here)
        assert r.returncode == 0, r.stderr
        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="ap-artifacts")["Contents"]]
        assert len(keys) == 3  # the dense checkpoint and two policy.json
        there.mkdir()
        (there / "studies").mkdir()
        import shutil

        shutil.copy(here / "studies" / "s3.db", there / "studies" / "s3.db")
        shutil.rmtree(here / "studies" / "checkpoints")  # the path the study names is gone
        r = run_in_process("apply", "--study", "s3", "--best", "--finetune-steps", "1", "--no-onnx", "--quiet", cwd=there)
        assert r.returncode == 0, r.stderr
        assert "fetched the dense checkpoint from the artifact store s3://ap-artifacts" in r.stderr
        assert len(list((there / "studies" / "checkpoints").glob("dense-*.pt"))) == 1
