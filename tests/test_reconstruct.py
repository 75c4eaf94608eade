"""Least-squares refit of pruned layers to the dense outputs (reconstruct.py) and the trial
proxy built on it (``reconstruct = true``)."""

import copy

import pytest
import torch
from torch import nn

import autoprune
from autoprune.core.groups import resolve_ignore
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner, apply_unstructured
from autoprune.core.reconstruct import dense_targets, reconstruct
from autoprune.task.models import build_model


def uniform(pruner: Pruner, keep: float) -> Policy:
    return Policy({g.id: GroupChoice("l1", keep) for g in pruner.groups})


@pytest.fixture(scope="module")
def resnet():
    """A ResNet-20 whose BatchNorm running means are all distinct, so they reveal channel order."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, input_size=8).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features))
    return model


def test_kept_outputs_name_the_dense_channels_each_pruned_layer_kept(resnet):
    example = torch.randn(1, 1, 8, 8)
    pruner = Pruner(resnet, example, ignored=resolve_ignore(resnet, example), seed=3)
    policy = Policy({g.id: GroupChoice("random", 0.5) for g in pruner.groups})  # not a prefix of the channels
    pruned, resolved = pruner.apply(policy)
    kept = pruner.kept_outputs(resolved)
    modules, dense = dict(pruned.named_modules()), dict(resnet.named_modules())
    # every conv of a residual group keeps the same channels as the group's root
    group = next(g for g in pruner.groups if len(g.members) > 1)
    assert all(kept[m] == kept[group.id] for m in group.members)
    checked = 0
    for conv, bn in [(n, n.replace("conv", "bn")) for n in kept if ".conv" in n] + \
                    [(n, n[:-1] + "1") for n in kept if n.endswith("shortcut.0")]:
        assert torch.equal(modules[bn].running_mean, dense[bn].running_mean[kept[conv]]), conv
        assert kept[conv] != list(range(len(kept[conv])))  # random importance: not simply the first ones
        checked += 1
    assert checked == len(kept) >= 11


def test_refit_brings_the_pruned_network_back_towards_the_dense_one(digits_dense):
    model, task = digits_dense
    pruner = Pruner(model, task.example_input(), ignored=resolve_ignore(model, task.example_input()))
    pruned, resolved = pruner.apply(uniform(pruner, 0.3))
    refit = copy.deepcopy(pruned)
    fits = reconstruct(refit, model, pruner.kept_outputs(resolved), task.train.x[:512])
    assert {f.name for f in fits} >= set(pruner.kept_outputs(resolved)) - {"features.0"}
    assert all(f.error_after <= f.error_before for f in fits)
    assert max(f.error_before - f.error_after for f in fits) > 0.2
    # on images the fit never saw, the logits move towards the dense ones
    x = task.val.x
    with torch.no_grad():
        target = model(x)
        err = [float((m.eval()(x) - target).pow(2).mean()) for m in (pruned, refit)]
    assert err[1] < 0.5 * err[0]
    # precomputed dense targets give exactly the same refit
    again = copy.deepcopy(pruned)
    reconstruct(again, dense_targets(model, task.train.x[:512]), pruner.kept_outputs(resolved))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), refit.state_dict().values()))


def test_refit_leaves_unstructured_zeros_alone(two_conv):
    dense = two_conv
    pruned = copy.deepcopy(dense)
    apply_unstructured([pruned.conv2], 0.5)
    zeros = pruned.conv2.weight == 0
    x = torch.randn(64, 1, 8, 8)
    names = {f.name for f in reconstruct(pruned, dense, {}, x)}
    assert "conv2" not in names and "fc" in names
    assert torch.all(pruned.conv2.weight[zeros] == 0)


def test_refit_proxy_trials_skip_fine_tuning_and_score_the_refit_model(digits_dense, tmp_path):
    model, task = digits_dense
    common = {"budget_flops": 0.3, "trials": 3, "finetune_steps": 0, "sampler": "random", "progress": False, "references": False,
              "batch_size": 64, "threads": 1, "methods": ["l1"], "keep_min": 0.125,
              "storage": f"sqlite:///{tmp_path}/s.db"}
    runs = {}
    for refit in (False, True):
        study = autoprune.search(model, (task.train.x, task.train.labels), (task.val.x, task.val.labels), task.example_input(),
                                 study=f"refit-{refit}", reconstruct=refit, reconstruct_images=512, **common)
        runs[refit] = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert [len(r) for r in runs.values()] == [3, 3]
    for t in runs[True]:
        assert "reconstruct" in t.user_attrs["seconds"] and t.user_attrs["seconds"]["finetune"] == 0
        assert t.user_attrs["accuracy_before_finetune"] == t.values[0]
    # the same policies (same sampler seed), each scored better after the refit
    assert [t.user_attrs["channels"] for t in runs[True]] == [t.user_attrs["channels"] for t in runs[False]]
    assert all(r.values[0] > p.values[0] for r, p in zip(runs[True], runs[False]))
