"""The Python API for users who hold their own model and data in code."""

import logging

import optuna
import torch

import autoprune
from autoprune.core.importance import Calibration
from autoprune.core.loops import train_dense
from autoprune.task.models import build_model
from autoprune.task.splits import load_task


def test_search_and_apply_policy_in_process(tmp_path):
    task = load_task("digits", val_size=300)
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    train_dense(model, task.train, epochs=2, batch_size=64, progress=False)
    storage = f"sqlite:///{tmp_path}/api.db"
    study = autoprune.search(
        model, (task.train.x, task.train.labels), list(zip(task.val.x, task.val.labels)), task.example_input(),
        budget_flops=0.6, storage=storage, study="api", trials=3, finetune_steps=5, methods=["l1", "taylor"],
        progress=False, references=False, batch_size=64, threads=1,
    )
    assert isinstance(study, optuna.Study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    dense_flops = autoprune.count_flops(model, task.example_input())
    assert all(t.values[1] <= 0.6 * dense_flops for t in complete)
    # resumable: the same call adds trials to the same study
    again = autoprune.search(
        model, (task.train.x, task.train.labels), (task.val.x, task.val.labels), task.example_input(),
        budget_flops=0.6, storage=storage, study="api", trials=1, finetune_steps=5, methods=["l1", "taylor"],
        progress=False, references=False, batch_size=64, threads=1,
    )
    assert len([t for t in again.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4

    best = max(study.best_trials, key=lambda t: t.values[0])
    policy = autoprune.Policy.from_dict(best.user_attrs["policy"])
    cal = Calibration(task.train.x[:64], task.train.labels[:64])
    pruned, resolved = autoprune.apply_policy(model, policy, example_input=task.example_input(), calibration=cal)
    assert autoprune.count_flops(pruned, task.example_input()) == best.values[1]
    assert resolved.channels() == best.user_attrs["channels"]
    assert pruned(task.val.x[:4]).shape == (4, 10)

    # the CLI cannot rebuild an in-memory model: it says so instead of failing obscurely
    from autoprune.cli import main

    assert main(["apply", "--storage", storage, "--study", "api", "--best", "--quiet"]) == 2


def test_a_stored_trial_replays_exactly_without_calibration_data(digits_dense, tmp_path):
    """Every trial stores its kept channel indices and the pruner's settings, so the API
    rebuilds the very network the trial measured: same channels, same FLOPs, although the
    search ranked channels with data-dependent criteria on calibration images the user never
    sees, and rounded with min_channels 4 (apply_policy's own default for bare keep ratios
    would be the same, but the stored meta decides)."""
    model, task = digits_dense
    study = autoprune.search(
        model, (task.train.x, task.train.labels), (task.val.x, task.val.labels), task.example_input(),
        budget_flops=0.3, storage=f"sqlite:///{tmp_path}/r.db", study="replay", trials=4, finetune_steps=0,
        methods=["taylor", "activation"], progress=False, references=False, batch_size=64, threads=1, bn_batches=2,
        min_channels=6, keep_min=0.125,
    )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    for t in complete:
        stored = t.user_attrs["policy"]
        assert stored["meta"]["min_channels"] == 6 and stored["meta"]["ignored"] == ["classifier.5", "features.0"]
        assert all(len(g["kept_indices"]) == g["kept"] for g in stored["groups"].values())
        pruned, resolved = autoprune.apply_policy(model, autoprune.Policy.from_dict(stored),
                                                  example_input=task.example_input())
        assert resolved.channels() == t.user_attrs["channels"]
        assert autoprune.count_flops(pruned, task.example_input()) == t.values[1] == t.user_attrs["flops"]
        assert autoprune.count_params(pruned) == t.user_attrs["params"]
    # min_channels 6 shaped the network: some group sits at 6, below what keep alone would give
    assert any(6 in t.user_attrs["channels"].values() for t in complete)


def test_library_calls_leave_the_callers_process_settings_alone(digits_dense, tmp_path):
    """Threads, the global random state, logger levels and the matplotlib backend are the
    caller's: a search, a FLOPs count and a plot change none of them for good."""
    import matplotlib

    from autoprune.policy_search import front as report

    model, task = digits_dense
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads != 2 else 1)
    wanted = torch.get_num_threads()
    torch.manual_seed(1234)
    rng = torch.random.get_rng_state()
    logging.getLogger("fvcore").setLevel(logging.DEBUG)
    backend = matplotlib.get_backend()
    try:
        study = autoprune.search(
            model, (task.train.x, task.train.labels), (task.val.x, task.val.labels), task.example_input(),
            budget_flops=0.5, storage=f"sqlite:///{tmp_path}/p.db", study="p", trials=2, finetune_steps=3,
            progress=False, references=False, batch_size=64, threads=1, bn_batches=2,
        )
        report.plot_front(study, tmp_path / "front.png")
        assert torch.get_num_threads() == wanted
        assert torch.equal(torch.random.get_rng_state(), rng)
        assert logging.getLogger("fvcore").level == logging.DEBUG
        assert matplotlib.get_backend() == backend
        assert (tmp_path / "front.png").stat().st_size > 5000
    finally:
        torch.set_num_threads(threads)
        logging.getLogger("fvcore").setLevel(logging.NOTSET)
