"""Architectures users write by hand (tests/user_models.py): every policy the search can sample
prunes them correctly, or cannot be sampled; the stem and head are found from the graph."""

import random

import optuna
import pytest
import torch
from user_models import USER_MODELS

import autoprune
from autoprune.core.groups import resolve_ignore
from autoprune.core.importance import Calibration
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner

EXAMPLE = torch.zeros(1, 1, 12, 12)
METHODS = ["l1", "l2", "fpgm", "taylor", "activation", "random"]


def calibration() -> Calibration:
    gen = torch.Generator().manual_seed(0)
    return Calibration(torch.randn(8, 1, 12, 12, generator=gen), torch.randint(0, 10, (8,), generator=gen), batch_size=8)


def check_runs(model: torch.nn.Module) -> None:
    x = torch.randn(3, 1, 12, 12)
    assert model.eval()(x).shape == (3, 10)
    model.train()(x).logsumexp(dim=1).sum().backward()
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            assert min(m.weight.shape[:2]) > 0, f"{name} lost every channel"


@pytest.mark.parametrize("prune_stem", [False, True])
@pytest.mark.parametrize("name", sorted(USER_MODELS))
def test_every_sampled_policy_prunes_user_models(name, prune_stem):
    torch.manual_seed(0)
    model = USER_MODELS[name]().eval()
    pruner = Pruner(model, EXAMPLE, ignored=resolve_ignore(model, EXAMPLE, prune_stem=prune_stem),
                    calibration=calibration(), min_channels=4, round_to=2)
    assert pruner.groups
    rng = random.Random(0)
    policies = [Policy({g.id: GroupChoice(m, k) for g in pruner.groups}) for m in METHODS for k in (0.01, 0.5)]
    policies += [Policy({g.id: GroupChoice(rng.choice(METHODS), rng.choice([0.05, 0.25, 0.5, 0.75, 1.0]))
                         for g in pruner.groups}) for _ in range(12)]
    for policy in policies:
        pruned, resolved = pruner.apply(policy)
        check_runs(pruned)
        for group in pruner.groups:  # each producer / chunk of a group keeps its share
            kept = set(resolved.groups[group.id].kept_indices)
            for segment in group.segments or (tuple(range(group.channels)),):
                n = len(kept & set(segment))
                assert n == len(segment) or (n >= 4 and n % 2 == 0), (group.id, segment, n)


def test_a_concatenation_feeding_a_depthwise_conv_keeps_every_branch():
    """The crash the issue saw: both branches feed one depthwise conv through a concatenation,
    so one group spans both producers. At the smallest keep each still has min_channels."""
    model = USER_MODELS["concat_depthwise"]().eval()
    pruner = Pruner(model, EXAMPLE, ignored=resolve_ignore(model, EXAMPLE), min_channels=4)
    (group,) = [g for g in pruner.groups if set(g.members) >= {"a", "b"}]
    assert group.segment_sizes() == [8, 24]
    pruned, resolved = pruner.apply(Policy({group.id: GroupChoice("l1", 0.01)}))
    assert pruned.a.out_channels == 4 and pruned.b.out_channels == 4 and pruned.dw.in_channels == 8
    check_runs(pruned)


def test_a_split_with_fixed_sizes_is_never_sampled():
    """torch.split(x, [12, 12]) hard-codes the sizes: pruning the conv before it breaks the
    forward pass, so that group is kept whole and named with the reason."""
    model = USER_MODELS["split_concat"]().eval()
    pruner = Pruner(model, EXAMPLE, ignored=resolve_ignore(model, EXAMPLE))
    assert "mix" in pruner.excluded and "split_with_sizes" in pruner.excluded["mix"]
    assert "mix" not in [g.id for g in pruner.groups]
    with pytest.raises(autoprune.UserError, match="mix: kept whole"):
        pruner.apply(Policy({"mix": GroupChoice("l1", 0.5)}))


def test_stem_and_head_come_from_the_graph_not_the_definition_order():
    model = USER_MODELS["head_first"]()  # declares head, stem, body in that order
    assert [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))] == \
        ["head", "stem", "body"]
    assert resolve_ignore(model, EXAMPLE) == ["head", "stem"]
    assert resolve_ignore(model, EXAMPLE, prune_stem=True) == ["head"]
    pruner = Pruner(model, EXAMPLE, ignored=resolve_ignore(model, EXAMPLE))
    assert [g.id for g in pruner.groups] == ["body"]


@pytest.mark.parametrize("name", sorted(USER_MODELS))
def test_a_search_on_user_models_has_no_failed_trial(name, tmp_path):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 12, 12, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    torch.manual_seed(0)
    model = USER_MODELS[name]()
    study = autoprune.search(
        model, (x[:64], y[:64]), (x[64:], y[64:]), EXAMPLE, budget_flops=0.8, storage=f"sqlite:///{tmp_path}/u.db",
        study=name, trials=6, finetune_steps=2, sampler="random", space="fill", keep_min=0.125,
        methods=METHODS, progress=False, references=False, batch_size=16, threads=1, bn_batches=1, calib_images=16, prune_stem=True,
    )
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.FAIL not in states, [t.user_attrs.get("reason") for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6
