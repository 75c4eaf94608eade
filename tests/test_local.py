"""The ``local`` search space: ``fill`` around the sensitivity-derived policy instead of
around uniform. Its anchor, its budget solve, its warm start and its resume."""

import optuna
import pytest

from autoprune.core.budget import Budget
from autoprune.core.groups import resolve_ignore
from autoprune.core.measure.flops import count_flops
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner
from autoprune.policy_search.objective import Objective, TrialSettings
from autoprune.policy_search.space import LOCAL_RANGE, Space, widths_of


@pytest.fixture(scope="module")
def setup(digits_dense):
    model, task = digits_dense
    pruner = Pruner(model, task.example_input(), ignored=resolve_ignore(model, task.example_input()))
    return task, model, pruner


def test_local_space_refines_the_anchor_and_spends_the_budget(setup):
    """Width 0 everywhere is the anchor's allocation (every group's keep a common multiple of
    the anchor's); width w scales a group by 2 ** (w / 4) against the others; every sampled
    policy meets the budget as fvcore counts it and spends most of it."""
    task, model, pruner = setup
    ids = [g.id for g in pruner.groups]
    # a deliberately skewed anchor: the first group narrow, the last one wide
    anchor = {gid: 0.2 + 0.15 * i for i, gid in enumerate(ids)}
    budget = int(0.3 * count_flops(model, pruner.example_input))
    space = Space(levels=(0.125, 1.0), methods=("l1",), shape="local", anchor=anchor)
    obj = Objective(pruner=pruner, space=space, budget=Budget(flops=budget), train=task.train,
                    val=task.val, settings=TrialSettings(finetune_steps=1))

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(space.params_for(Policy({g: GroupChoice("l1", k) for g, k in anchor.items()})))
    at_anchor = space.suggest(study.ask(), pruner.groups, obj.fit)
    ratios = {g: at_anchor.groups[g].keep / anchor[g] for g in ids}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()), rel=1e-3), ratios

    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    seen = set()
    for _ in range(8):
        trial = study.ask()
        policy = space.suggest(trial, pruner.groups, obj.fit)
        flops = count_flops(pruner.apply(policy)[0], pruner.example_input)
        assert 0.85 * budget < flops <= budget, (flops, budget, policy)
        w = {g: trial.params[f"{g}:width"] for g in ids}
        assert all(-LOCAL_RANGE <= v <= LOCAL_RANGE for v in w.values())
        unclipped = [g for g in ids if 0.125 < policy.groups[g].keep < 1.0]
        for a in unclipped:  # the sampled widths set the ratios between groups, relative to the anchor
            for b in unclipped:
                want = anchor[a] / anchor[b] * 2 ** ((w[a] - w[b]) / 4)
                assert policy.groups[a].keep / policy.groups[b].keep == pytest.approx(want, rel=1e-3)
        seen.add(tuple(w.values()))
        study.tell(trial, [0.0, flops])
    assert len(seen) > 1


def test_local_space_needs_its_anchor(setup):
    _, _, pruner = setup
    space = Space(levels=(0.125, 1.0), methods=("l1",), shape="local", anchor=None)
    with pytest.raises(ValueError, match="anchor"):
        space.relative_width(pruner.groups[0].id, 0)


def test_widths_of_a_policy_relative_to_an_anchor():
    anchor = {"a": 0.2, "b": 0.4, "c": 0.8}
    same = Policy({g: GroupChoice("l1", k) for g, k in anchor.items()})
    assert widths_of(same, anchor) == {"a": 0, "b": 0, "c": 0}
    # uniform is 4x the anchor at a, 2x at b, 1x at c: four width steps per octave
    uniform = Policy({g: GroupChoice("l1", 0.8) for g in anchor})
    w = widths_of(uniform, anchor)
    assert w["a"] - w["b"] == 4 and w["b"] - w["c"] == 4 and w["b"] == 0
    # a 'fill' space (no anchor) counts two steps per octave around the geometric mean
    assert widths_of(same) == {"a": -2, "b": 0, "c": 2}
    far = Policy({"a": GroupChoice("l1", 0.01), "b": GroupChoice("l1", 1.0)})
    assert widths_of(far, {"a": 1.0, "b": 1.0}) == {"a": -LOCAL_RANGE, "b": LOCAL_RANGE}  # clipped