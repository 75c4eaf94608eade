"""Bad input, as users gave it: every case exits 2 with one line that names the bad value (and
what is allowed), prints no traceback, and leaves the stored study byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import re
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from conftest import run_cli, run_in_process

FAST = ["--dataset", "digits", "--val-size", "300", "--dense-epochs", "2", "--finetune-steps", "2", "--no-references",
        "--threads", "1", "--quiet"]
#: the study every case points at (or next to), created once
STUDY = ["--storage", "sqlite:///studies/s.db", "--study", "s"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("bad")
    r = run_in_process("search", *FAST, "--budget-flops", "0.5", "--trials", "2", *STUDY, cwd=work)
    assert r.returncode == 0, r.stderr
    (work / "folder").mkdir()
    (work / "text.txt").write_text("101\n")
    (work / "binary.toml").write_bytes(bytes(range(256)))
    toml = {"model5": "model = 5", "dataset5": "dataset = 5", "storage5": "storage = 5", "study5": "study = 5",
            "checkpoint5": "checkpoint = 5", "data_root5": "data_root = 5", "cache_dir5": "cache_dir = 5",
            "timeout_x": "timeout = 'x'", "threads_frac": "threads = 1.5", "search5": "search = 5",
            "margin": "early_stop_margin = -0.1", "heartbeat0": "heartbeat = 0", "db_retry_inf": "db_retry = inf",
            "keep_step0": "keep_step = 0", "no_download": "download = false\ndataset = 'cifar10'"}
    for name, line in toml.items():
        dataset = "" if "dataset" in line else "dataset = 'digits'\n"
        (work / f"{name}.toml").write_text(f"budget_flops = 0.5\n{dataset}{line}\n")
    (work / "search5.toml").write_text("search = 5\n")
    # checkpoints: a whole pickled model (refused unread), NaN weights, a state dict that fits
    info = optuna.load_study(study_name="s", storage="sqlite:///" + str(work / "studies" / "s.db")).user_attrs["autoprune"]
    state = torch.load(info["dense"]["checkpoint"], weights_only=True)["state_dict"]
    torch.save(torch.nn.Linear(2, 2), work / "whole.pt")
    from autoprune.task.models import build_model

    torch.save(build_model("resnet20", num_classes=10, in_channels=1, input_size=8).state_dict(), work / "resnet.pt")
    torch.save({"state_dict": {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
                               for k, v in state.items()}}, work / "nan.pt")
    # policies: a trial's, hand-edited
    policy = optuna.load_study(study_name="s", storage=f"sqlite:///{work}/studies/s.db").trials[0].user_attrs["policy"]
    gid = next(iter(policy["groups"]))
    for name, edit in {"kept_big": {"kept": 10_000}, "kept_edited": {"kept": 1}}.items():
        p = json.loads(json.dumps(policy))
        p["groups"][gid].update(edit)
        p["groups"][gid].pop("kept_indices")
        (work / f"{name}.json").write_text(json.dumps(p))
    (work / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    sqlite_other = work / "other.db"
    import sqlite3

    with sqlite3.connect(sqlite_other) as c:
        c.execute("create table x (a)")
    (work / "empty.db").write_bytes(b"")
    return work


def fingerprint(work: Path) -> dict[str, str]:
    """Every stored file's sha256: the studies, their artifacts and the other databases."""
    files = sorted([*work.glob("studies/**/*.db"), *work.glob("studies/*-artifacts/**/*"), *work.glob("*.db")])
    return {str(f.relative_to(work)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


SEARCH = ["search", *FAST, *STUDY]
#: (case, arguments, what the one line must say)
CASES = [
    # config files
    *[(f"config {k}", ["search", "--config", f"{k}.toml"], msg) for k, msg in [
        ("model5", "model = 5 must be a string"), ("dataset5", "dataset = 5 must be a string"),
        ("storage5", "storage = 5 must be a string"), ("checkpoint5", "checkpoint = 5 must be a string"),
        ("data_root5", "data_root = 5 must be a string"), ("cache_dir5", "cache_dir = 5 must be a string"),
        ("timeout_x", "timeout = 'x' must be a finite number"), ("threads_frac", "threads = 1.5 must be an integer"),
        ("search5", "search = 5 must be a table")]],
    ("config study = 5", ["search", *FAST, "--config", "study5.toml"], "study = 5 must be a string"),
    ("config binary", ["search", "--config", "binary.toml"], "binary.toml is not valid TOML"),
    ("config folder", ["search", "--config", "folder"], "config file folder is a folder"),
    ("config for front", ["front", "--config", "model5.toml"], "model = 5 must be a string"),
    # numbers
    ("budget 1e400", [*SEARCH, "--budget-flops", "1e400"], "--budget-flops '1e400' is too large"),
    ("budget -1", [*SEARCH, "--budget-flops", "-1"], "--budget-flops '-1' must be > 0"),
    ("budget 1.5", [*SEARCH, "--budget-flops", "1.5"], "'1.5' is neither a fraction of dense (at most 1"),
    ("budget words", [*SEARCH, "--budget-flops", "half"], "'half' is not a number"),
    ("seed -1", [*SEARCH, "--budget-flops", "0.5", "--seed", "-1"], "--seed -1 must be between 0 and 2**32 - 1"),
    ("timeout nan", [*SEARCH, "--budget-flops", "0.5", "--timeout", "nan"], "--timeout nan must be a finite number"),
    ("timeout -5", [*SEARCH, "--budget-flops", "0.5", "--timeout", "-5"], "--timeout -5.0 must be > 0 seconds"),
    ("margin -0.1", [*SEARCH, "--config", "margin.toml"], "margin.toml: early_stop_margin = -0.1 must be in [0, 1)"),
    ("keep_step 0", [*SEARCH, "--config", "keep_step0.toml"], "keep_step0.toml: keep_step = 0 must be in (0, 1]"),
    ("round-to 1000", [*SEARCH[:-1], "s-round", "--budget-flops", "0.5", "--round-to", "1000"],
     "round_to 1000 is larger than every prunable group (the widest has 128 channels)"),
    ("workers 0", [*SEARCH, "--budget-flops", "0.5", "--workers", "0"], "--workers 0 must be >= 1"),
    ("no budget", [*SEARCH], "a budget is required: --budget-flops 0.5"),
    ("latency 7", [*SEARCH, "--budget-latency", "7"], "--budget-latency '7' needs a unit above 1"),
    ("latency words", [*SEARCH, "--budget-latency", "fast"], "--budget-latency 'fast' is not a latency"),
    ("latency runtime", [*SEARCH, "--budget-latency", "0.5", "--latency-runtime", "tensorrt"],
     "unknown latency runtime 'tensorrt'; valid choices: onnxruntime, torch"),
    ("latency batch 0", [*SEARCH, "--budget-latency", "0.5", "--latency-batch", "0"], "--latency-batch 0 must be >= 1"),
    ("latency out of reach", [*SEARCH[:-1], "s-lat", "--budget-latency", "1us"],
     "budget_latency 1us is below what this search space reaches: every group at keep_min 0.25 measures"),
    ("heartbeat 0", [*SEARCH, "--config", "heartbeat0.toml"], "heartbeat0.toml: heartbeat = 0 must be >= 1"),
    ("db_retry inf", [*SEARCH, "--config", "db_retry_inf.toml"], "db_retry_inf.toml: db_retry = inf must be a finite number"),
    # storage
    ("storage under a file", ["search", *FAST, "--budget-flops", "0.5", "--storage", "sqlite:///text.txt/x.db"],
     "text.txt is a file, not a folder"),
    ("storage is a folder", ["search", *FAST, "--budget-flops", "0.5", "--storage", "sqlite:///folder"],
     "folder is a folder, not a database file"),
    ("storage bad URL", ["search", *FAST, "--budget-flops", "0.5", "--storage", "nosuchdb://x"], "cannot open storage"),
    ("out is a file", [*SEARCH, "--budget-flops", "0.5", "--out", "text.txt"], "--out text.txt is a file"),
    ("artifact dir is a file", [*SEARCH, "--budget-flops", "0.5", "--artifact-dir", "text.txt"],
     "artifact store 'text.txt' is a file, not a folder"),
    ("study ../x", ["search", *FAST, "--budget-flops", "0.5", "--study", "../x"], "--study '../x' is not a valid study name"),
    ("front study ../x", ["front", "--study", "../x"], "--study '../x' is not a valid study name"),
    # read-only commands on storages that hold no study
    ("front on another db", ["front", "--storage", "sqlite:///other.db"], "holds no study"),
    ("front on an empty file", ["front", "--storage", "sqlite:///empty.db"], "holds no study"),
    ("apply on an empty file", ["apply", "--storage", "sqlite:///empty.db", "--best"], "holds no study"),
    ("confirm on another db", ["confirm", "--storage", "sqlite:///other.db"], "holds no study"),
    ("worker on another db", ["worker", "--storage", "sqlite:///other.db"], "holds no study"),
    ("worker unknown study", ["worker", *STUDY[:2], "--study", "nope"], "unknown study in sqlite:///studies/s.db: 'nope'"),
    ("worker --trials 0", ["worker", *STUDY, "--trials", "0"], "--trials 0 must be at least 1"),
    ("front --out file", ["front", *STUDY, "--out", "text.txt"], "--out text.txt is a file"),
    # policy files
    ("policy kept > channels", ["apply", *STUDY, "--policy", "kept_big.json"], "kept 10000 is more than its"),
    ("policy kept edited", ["apply", *STUDY, "--policy", "kept_edited.json"], "kept 1 does not match keep"),
    ("policy nested", ["apply", *STUDY, "--policy", "deep.json"], "deep.json is nested too deeply"),
    ("policy folder", ["apply", *STUDY, "--policy", "folder"], "policy file folder is a folder"),
    ("policy text", ["apply", *STUDY, "--policy", "text.txt"], "not an autoprune policy"),
    # checkpoints
    ("checkpoint text", [*SEARCH[:-1], "s-ck", "--budget-flops", "0.5", "--checkpoint", "text.txt"],
     "text.txt is not a PyTorch checkpoint"),
    ("checkpoint whole model", [*SEARCH[:-1], "s-ck", "--budget-flops", "0.5", "--checkpoint", "whole.pt"],
     "holds pickled Python objects (e.g. a whole model saved with torch.save(model)), which autoprune never unpickles"),
    ("checkpoint folder", [*SEARCH[:-1], "s-ck", "--budget-flops", "0.5", "--checkpoint", "folder"],
     "checkpoint folder is a folder"),
    ("checkpoint of another model", [*SEARCH[:-1], "s-ck2", "--budget-flops", "0.5", "--checkpoint", "resnet.pt"],
     "does not fit the model SmallCNN: "),
    ("budget at dense", [*SEARCH[:-1], "s-full", "--budget-flops", "1"],
     "budget_flops 1 = 491K FLOPs is at or above the dense model's 491K: nothing would be pruned"),
    ("no database driver", ["front", "--storage", "postgresql+pg8000://u@127.0.0.1:9/db", "--study", "s"],
     "needs the database driver 'pg8000', which is not installed: pip install pg8000"),
    ("checkpoint NaN", [*SEARCH[:-1], "s-ck", "--budget-flops", "0.5", "--checkpoint", "nan.pt"],
     "has NaN or infinite values in"),
    ("apply --checkpoint other", ["apply", *STUDY, "--best", "--checkpoint", "whole.pt"],
     "is not the checkpoint the study was searched on"),
    # other messages
    ("cifar10 missing", ["search", "--config", "no_download.toml", *STUDY[:2]],
     "CIFAR-10 not found (no --data-root given): pass --data-root"),
    ("val-size", [*SEARCH, "--budget-flops", "0.5", "--val-size", "100000"],
     "--val-size 100000 must be between 1 and half the training set"),
    ("did you mean, any case", [*SEARCH, "--budget-flops", "0.5", "--model", "SmallCNN"], "Did you mean 'smallcnn'?"),
    ("unknown method", [*SEARCH, "--budget-flops", "0.5", "--methods", "L1,magic"], "unknown importance method 'L1'"),
]


@pytest.mark.parametrize("case,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(work, case, args, message):
    before = fingerprint(work)
    r = run_in_process(*args, cwd=work)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.stderr, r.stdout)
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"autoprune {args[0]}: error: ") and message in lines[0], lines[0]
    assert "\x1b[" not in lines[0]  # no terminal colour codes
    assert fingerprint(work) == before


def test_an_unwritable_storage_folder_is_refused_before_any_work(work, monkeypatch):
    """(As root every folder is writable, so the access check is made to answer no.)"""
    from autoprune.store import storage

    denied = (work / "locked").resolve()
    denied.mkdir()
    real = storage._writable
    monkeypatch.setattr(storage, "_writable", lambda p, folder: False if Path(p).resolve() == denied else real(p, folder=folder))
    r = run_in_process("search", *FAST, "--budget-flops", "0.5", "--storage", "sqlite:///locked/x.db", cwd=work)
    assert r.returncode == 2 and r.stderr.strip().endswith("the folder locked is not writable; choose another --storage")
    assert "training" not in r.stderr and not list(denied.iterdir())


def test_a_policy_with_missing_groups_says_which_are_kept_whole(work):
    info = optuna.load_study(study_name="s", storage=f"sqlite:///{work}/studies/s.db")
    policy = info.trials[0].user_attrs["policy"]
    dropped = list(policy["groups"])[:2]
    for gid in dropped:
        del policy["groups"][gid]
    (work / "partial.json").write_text(json.dumps(policy))
    r = run_in_process("apply", *STUDY, "--policy", "partial.json", "--finetune-steps", "1", "--no-onnx", "--quiet",
                       "--out", "partial", cwd=work)
    assert r.returncode == 0, r.stderr
    assert f"partial.json has no entry for 2 group(s), kept whole: {', '.join(dropped)}" in r.stderr


def test_a_closed_pipe_ends_quietly(work):
    """front | head -1: no BrokenPipeError."""
    r = subprocess.run(f"{sys.executable} -m autoprune front {' '.join(STUDY)} --format csv | head -1", shell=True,
                       cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.stdout.startswith("trial,") and "Error" not in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_in_a_real_process_prints_one_line(work):
    """SIGINT to a running search: exit 130, the friendly line, no traceback from Optuna."""
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "search", *FAST[:6], "--finetune-steps", "2000",
                             "--no-references", "--threads", "1", "--quiet", "--budget-flops", "0.5",
                             "--storage", "sqlite:///studies/ctrl.db", "--study", "ctrl"],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        db = work / "studies" / "ctrl.db"
        if db.exists():
            try:
                # skip_table_creation: creating the tables here would race the search creating them
                storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True)
                if any(t.state.name == "RUNNING" for t in optuna.load_study(study_name="ctrl", storage=storage).trials):
                    break
            except (KeyError, optuna.exceptions.OptunaError, Exception):  # noqa: BLE001 - not created yet
                pass
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted; the trial in flight is queued")


def test_apply_interrupted_says_nothing_was_exported(work, monkeypatch):
    from autoprune.ship import apply as export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "recover", interrupted)
    r = run_in_process("apply", *STUDY, "--best", "--quiet", "--out", "stopped", cwd=work)
    assert r.returncode == 130 and r.stderr.strip() == "interrupted; nothing was exported"
    assert not (work / "stopped").exists()


def test_old_pickles_are_never_unpickled(work):
    """A legacy (non-zip) pickle with code in it is refused by weights_only loading, unrun."""
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    with open(work / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Boom()}, f, protocol=2)
    r = run_in_process("search", *FAST, "--budget-flops", "0.5", "--checkpoint", "evil.pt", *STUDY[:2], "--study",
                       "s-evil", cwd=work)
    assert r.returncode == 2 and not (work / "pwned").exists()


def test_a_checkpoint_of_another_model_is_summarised_not_listed(work):
    r = run_in_process(*SEARCH[:-1], "s-ck3", "--budget-flops", "0.5", "--checkpoint", "resnet.pt", cwd=work)
    line = r.stderr.strip()
    assert r.returncode == 2 and len(line) < 700, line
    assert re.search(r"\d+ of the model's \d+ keys missing \([^)]*, \.\.\.\); \d+ unexpected", line), line
    assert "Likely cause: it was saved from another architecture" in line


def test_the_postgres_extra_is_named_when_its_driver_is_missing(work, monkeypatch):
    """Without psycopg2 (the ``postgres`` extra), the line says what to install."""
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # import psycopg2 raises ImportError
    r = run_in_process("front", "--storage", "postgresql://u@127.0.0.1:9/db", "--study", "s", cwd=work)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().endswith("needs the database driver 'psycopg2', which is not installed: "
                                     'pip install "autoprune[postgres]"'), r.stderr


def test_the_keep_min_advice_works_when_typed_as_printed(work):
    """A budget below the space's reach names a --keep-min; the same command with it runs."""
    args = [*FAST, "--budget-flops", "0.05", "--storage", "sqlite:///studies/km.db", "--study", "km"]
    r = run_in_process("search", *args, cwd=work)
    assert r.returncode == 2, r.stderr
    advice = re.search(r"or add (--keep-min [0-9.]+)", r.stderr)
    assert advice, r.stderr
    r = run_in_process("search", *args, *advice.group(1).split(), "--trials", "1", cwd=work)
    assert r.returncode == 0, r.stderr
