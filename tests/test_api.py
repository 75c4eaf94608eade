"""The Python API for users who hold their own model and data in code."""

import optuna
import torch

import autoprune
from autoprune.data import load_task
from autoprune.importance import Calibration
from autoprune.models import build_model
from autoprune.train import train_dense


def test_search_and_apply_policy_in_process(tmp_path):
    task = load_task("digits", val_size=300)
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    train_dense(model, task.train_x, task.train_y, epochs=2, batch_size=64, progress=False)
    storage = f"sqlite:///{tmp_path}/api.db"
    study = autoprune.search(
        model, (task.train_x, task.train_y), list(zip(task.val_x, task.val_y)), task.example_input(),
        budget_flops=0.6, storage=storage, study="api", trials=3, finetune_steps=5, methods=["l1", "taylor"],
        progress=False, batch_size=64, threads=1,
    )
    assert isinstance(study, optuna.Study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    dense_flops = autoprune.count_flops(model, task.example_input())
    assert all(t.values[1] <= 0.6 * dense_flops for t in complete)
    # resumable: the same call adds trials to the same study
    again = autoprune.search(
        model, (task.train_x, task.train_y), (task.val_x, task.val_y), task.example_input(),
        budget_flops=0.6, storage=storage, study="api", trials=1, finetune_steps=5, methods=["l1", "taylor"],
        progress=False, batch_size=64, threads=1,
    )
    assert len([t for t in again.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4

    best = max(study.best_trials, key=lambda t: t.values[0])
    policy = autoprune.Policy.from_dict(best.user_attrs["policy"])
    cal = Calibration(task.train_x[:64], task.train_y[:64])
    pruned, resolved = autoprune.apply_policy(model, policy, example_input=task.example_input(), calibration=cal)
    assert autoprune.count_flops(pruned, task.example_input()) == best.values[1]
    assert resolved.channels() == best.user_attrs["channels"]
    assert pruned(task.val_x[:4]).shape == (4, 10)

    # the CLI cannot rebuild an in-memory model: it says so instead of failing obscurely
    from autoprune.cli import main

    assert main(["apply", "--storage", storage, "--study", "api", "--best", "--quiet"]) == 2
