"""Compute is charged in FLOPs of the networks that ran: n x F for a pass without gradients,
3 x n x F for one with them (forward + backward), per kind of pass, per trial."""

from __future__ import annotations

import torch

import autoprune
from autoprune.core.batches import TensorSplit
from autoprune.core.compute import Ledger, dense_epoch_flops
from autoprune.core.loops import evaluate, finetune, recalibrate_bn

F = 17810  # TwoConv's fvcore FLOPs per 8x8 image (tests/test_measure.py counts them by hand)


def test_the_ledger_charges_what_ran_by_hand_count(two_conv):
    data = TensorSplit(torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,)))
    ledger = Ledger()
    with ledger.watching(two_conv, F):
        evaluate(two_conv, data)  # 10 images, no gradients
        recalibrate_bn(two_conv, data, num_batches=2, batch_size=5)  # 10 images, no gradients
        finetune(two_conv, data, steps=3, batch_size=4)  # 3 batches of 4, forward and backward
    assert ledger.flops == {"forward": 20 * F, "train": 3 * 4 * 3 * F}
    evaluate(two_conv, data)  # not watched any more
    assert ledger.total == 20 * F + 36 * F
    assert ledger.record(dense_epoch_flops(F, 10))["dense_epochs"] == round(56 / 30, 6)


def test_a_network_watched_twice_is_charged_once(two_conv):
    ledger = Ledger()
    ledger.watch(two_conv, F, dense=True)
    ledger.watch(two_conv, F, dense=True)  # the teacher is the dense model itself on the CPU
    with torch.no_grad():
        two_conv(torch.zeros(2, 1, 8, 8))
    ledger.close()
    assert ledger.flops == {"dense_forward": 2 * F}


def test_each_trial_stores_the_compute_it_spent(digits_dense, tmp_path):
    model, task = digits_dense
    study = autoprune.search(
        model, (task.train.x, task.train.labels), (task.val.x, task.val.labels), task.example_input(),
        budget_flops=0.5, storage=f"sqlite:///{tmp_path}/c.db", study="c", trials=2, finetune_steps=3,
        batch_size=32, bn_batches=2, methods=["l1"], progress=False, references=False, threads=1,
    )
    epoch = dense_epoch_flops(study.user_attrs["autoprune"]["dense"]["flops"], len(task.train))
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 2
    for t in trials:
        c = t.user_attrs["compute"]
        flops = t.user_attrs["flops"]
        assert c["flops"]["train"] == 3 * 32 * 3 * flops  # the fine-tune, exactly
        # BN recalibration (2 x 32), the before-fine-tune diagnostic and the search-val score, at least
        assert c["flops"]["forward"] >= (64 + len(task.val)) * flops
        assert "dense_train" not in c["flops"]  # l1 scores weights, not data
        assert c["total_flops"] == sum(c["flops"].values())
        assert c["dense_epochs"] == round(c["total_flops"] / epoch, 6)


def test_a_deep_copy_of_a_watched_network_is_not_charged(two_conv):
    """Pruning deep-copies the dense model: the copy's passes are not the dense model's."""
    import copy

    ledger = Ledger()
    ledger.watch(two_conv, F, dense=True)
    clone = copy.deepcopy(two_conv)
    with torch.no_grad():
        clone(torch.zeros(3, 1, 8, 8))
        two_conv(torch.zeros(1, 1, 8, 8))
    ledger.close()
    assert ledger.flops == {"dense_forward": F}


def test_closing_removes_the_global_hook(two_conv):
    ledger = Ledger()
    ledger.watch(two_conv, F)
    ledger.close()
    with torch.no_grad():
        two_conv(torch.zeros(1, 1, 8, 8))
    assert ledger.flops == {} and ledger._handle is None
