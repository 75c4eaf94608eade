"""Search levers: early stopping of dominated trials, sensitivity analysis and the policy
derived from it, warm starts."""

import optuna
import pytest
import torch

from autoprune.core.budget import Budget
from autoprune.core.groups import resolve_ignore
from autoprune.core.measure.flops import count_flops
from autoprune.core.prune import Pruner
from autoprune.core.sensitivity import analyse, derived_policy
from autoprune.policy_search.objective import Objective, TrialSettings
from autoprune.policy_search.space import Space


@pytest.fixture(scope="module")
def setup(digits_dense):
    model, task = digits_dense
    pruner = Pruner(model, task.example_input(), ignored=resolve_ignore(model, task.example_input()))
    return task, model, pruner


def objective(setup, **settings) -> Objective:
    task, _, pruner = setup
    return Objective(
        pruner=pruner, space=Space(levels=(0.5, 0.75, 1.0), methods=("l1",)), budget=Budget(flops=10**9),
        train=task.train, val=task.val,
        settings=TrialSettings(finetune_steps=9, batch_size=64, **settings),
    )


def completed_trial(acc_at_check: float, flops: float) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(values=[0.9, flops], user_attrs={"accuracy_at_check": acc_at_check})


def test_early_stop_stops_only_trials_dominated_at_the_check(setup):
    task, model, _ = setup
    study = optuna.create_study(directions=["maximize", "minimize"])
    for flops in (1000, 2000, 3000, 4000, 5000):
        study.add_trial(completed_trial(1.0, flops))
    obj = objective(setup, early_stop=0.34, early_stop_margin=0.02)
    state: dict = {}
    step, keep_going = obj._check(study.ask(), model, 2500, state)
    assert step == 3
    assert keep_going() is False  # trials with 1000 and 2000 FLOPs scored 1.0 at the check
    assert "trial 0" in state["reason"] or "trial 1" in state["reason"]
    assert state["accuracy"] < 0.98
    state = {}
    assert obj._check(study.ask(), model, 900, state)[1]() is True  # nothing cheaper to compare with
    assert obj._check(study.ask(), model, 990, {})[1]() is False  # 1000 FLOPs is within the 2% tolerance
    assert objective(setup)._check(study.ask(), model, 2500, {}) is None  # off by default


def test_early_stop_waits_for_enough_checked_trials(setup):
    _, model, _ = setup
    study = optuna.create_study(directions=["maximize", "minimize"])
    for flops in (1000, 2000):
        study.add_trial(completed_trial(1.0, flops))
    assert objective(setup, early_stop=0.5)._check(study.ask(), model, 5000, {})[1]() is True


def test_early_stopped_trials_are_recorded_as_pruned_with_the_reason(setup):
    # rivals scored 1.0 at the check and the margin is 0: every new trial is dominated there
    # (the threshold itself is tested above; this test is about how a stop is recorded)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for flops in (1, 2, 3, 4, 5):
        study.add_trial(completed_trial(1.0, flops))
    study.optimize(objective(setup, early_stop=0.5, early_stop_margin=0.0), n_trials=2)
    stopped = study.trials[5:]
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in stopped)
    assert all(t.user_attrs["early_stopped"] and t.user_attrs["reason"].startswith("early-stopped after 4/9") for t in stopped)
    assert all(all(v <= 0 for v in t.constraints.values()) for t in stopped)  # feasible, just hopeless


def test_sensitivity_and_derived_policy(setup):
    task, model, pruner = setup
    levels = [0.25, 0.5, 0.75, 1.0]
    result = analyse(pruner, task.train, task.val, levels, images=200, bn_batches=2, batch_size=64)
    assert set(result["groups"]) == {g.id for g in pruner.groups}
    assert all([r["keep"] for r in rows] == [0.25, 0.5, 0.75] for rows in result["groups"].values())
    assert all(r["flops"] < result["dense_flops"] for rows in result["groups"].values() for r in rows)
    budget = int(0.5 * result["dense_flops"])
    policy = derived_policy(result, pruner, levels, budget)
    pruned, _ = pruner.apply(policy)
    assert count_flops(pruned, task.example_input()) <= budget
    assert all(g.keep in levels for g in policy.groups.values())
    assert derived_policy(result, pruner, levels, 10) is None  # below the reachable minimum


def test_sensitivity_analysis_is_cached_per_dense_model_data_and_settings(setup, tmp_path, monkeypatch):
    from autoprune.core import sensitivity

    task, model, pruner = setup
    train, val = task.train, task.val
    kw = {"images": 100, "bn_batches": 1, "batch_size": 64, "cache_dir": tmp_path}
    first = sensitivity.analyse(pruner, train, val, [0.5, 1.0], **kw)
    assert len(list(tmp_path.glob("sensitivity-*.json"))) == 1
    assert first["seconds"] > 0  # what the analysis cost, still known on a cache hit
    scored = []  # evaluations run: one per group and level, plus the dense model
    real = sensitivity.evaluate
    monkeypatch.setattr(sensitivity, "evaluate", lambda *a, **k: scored.append(1) or real(*a, **k))
    assert sensitivity.analyse(pruner, train, val, [0.5, 1.0], **kw) == first and not scored
    sensitivity.analyse(pruner, train, val, [0.25, 1.0], **kw)  # other levels
    sensitivity.analyse(pruner, train, val.subset(torch.arange(1, len(val))), [0.5, 1.0], **kw)  # other images
    other = Pruner(model, task.example_input(), ignored=pruner.ignored, min_channels=3)  # other rounding
    sensitivity.analyse(other, train, val, [0.5, 1.0], **kw)
    assert len(scored) == 3 * (len(pruner.groups) + 1) and len(list(tmp_path.glob("sensitivity-*.json"))) == 4


def test_clearly_over_budget_policies_are_rejected_without_pruning(setup):
    task, _, pruner = setup
    obj = objective(setup)
    obj.budget = Budget(flops=1)  # nothing fits
    calls = []
    original = pruner.apply
    pruner.apply = lambda policy: calls.append(policy) or original(policy)
    try:
        study = optuna.create_study(directions=["maximize", "minimize"])
        study.optimize(obj, n_trials=3)
    finally:
        pruner.apply = original
    assert calls == []
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["feasible"] is False
        assert t.user_attrs["flops_predicted"] > 1 and t.constraints["flops"] > 0


def test_a_distilled_trial_learns_from_the_dense_model(setup):
    """With distillation the fine-tune gets the dense model as its teacher and every step's
    loss is the distillation loss; without it, there is no teacher."""
    from autoprune.core import loops as train
    from autoprune.policy_search import objective as objective_module

    task, _, pruner = setup
    obj = Objective(
        pruner=pruner, space=Space(levels=(0.5, 0.75, 1.0), methods=("l1",), distill="search"), budget=Budget(flops=10**9),
        train=task.train, val=task.val, settings=TrialSettings(finetune_steps=3, batch_size=64),
    )
    teachers, losses = [], []
    real_finetune, real_loss = train.finetune, train.distillation_loss

    def finetune(*args, teacher=None, **kwargs):
        teachers.append(teacher)
        return real_finetune(*args, teacher=teacher, **kwargs)

    train.distillation_loss = lambda *a, **k: losses.append(1) or real_loss(*a, **k)
    objective_module.finetune = finetune
    try:
        study = optuna.create_study(directions=["maximize", "minimize"])
        study.enqueue_trial({"distill": True})
        study.enqueue_trial({"distill": False})
        study.optimize(obj, n_trials=2)
    finally:
        objective_module.finetune, train.distillation_loss = real_finetune, real_loss
    assert teachers == [pruner.dense, None]
    assert len(losses) == 3  # the distilled trial's 3 fine-tune steps, and none of the other's
    distilled, plain = study.trials
    assert distilled.state == plain.state == optuna.trial.TrialState.COMPLETE
    assert distilled.params["distill"] is True and distilled.user_attrs["policy"]["distill"] is True
    assert plain.user_attrs["policy"]["distill"] is False


def test_fill_space_spends_the_budget_wherever_the_widths_put_it(setup):
    """Every sampled ``fill`` policy meets the budget exactly as fvcore counts it and uses
    most of it; width 0 everywhere is uniform pruning; wider groups keep more channels."""
    task, model, pruner = setup
    dense_flops = count_flops(model, pruner.example_input)
    budget = int(0.3 * dense_flops)
    obj = Objective(
        pruner=pruner, space=Space(levels=(0.125, 1.0), methods=("l1",), shape="fill"), budget=Budget(flops=budget),
        train=task.train, val=task.val, settings=TrialSettings(finetune_steps=1),
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = study.ask()
        policy = obj.space.suggest(trial, pruner.groups, obj.fit)
        flops = count_flops(pruner.apply(policy)[0], pruner.example_input)
        assert 0.85 * budget < flops <= budget, (flops, budget, policy)
        study.tell(trial, [0.0, flops])
    ids = [g.id for g in pruner.groups]
    uniform = obj.fit({g: 1.0 for g in ids}, "l1")
    assert len({c.keep for c in uniform.groups.values()}) == 1
    skewed = obj.fit({g: (4.0 if g == ids[-1] else 1.0) for g in ids}, "l1")
    assert skewed.groups[ids[-1]].keep > uniform.groups[ids[-1]].keep
    assert skewed.groups[ids[0]].keep < uniform.groups[ids[0]].keep


def test_fill_space_warm_start_is_uniform_at_the_budget(setup):
    from autoprune.policy_search.plan import space_of
    from autoprune.policy_search.warmstart import warm_start
    from autoprune.task.config import SearchConfig

    task, model, pruner = setup
    config = SearchConfig.from_dict({"model": "smallcnn", "dataset": "digits", "budget_flops": "0.3", "keep_min": 0.125,
                                     "space": "fill"})
    space = space_of(config)
    assert space.shape == "fill"
    study = optuna.create_study(directions=["maximize", "minimize"])
    budget = Budget(flops=int(0.3 * count_flops(model, pruner.example_input)))
    warm_start(study, pruner, space, budget, config, task.train, task.val)
    (queued,) = study.get_trials(deepcopy=False)
    fixed = queued.system_attrs["fixed_params"]
    assert {k: v for k, v in fixed.items() if k.endswith(":width")} == {f"{g.id}:width": 0 for g in pruner.groups}
    assert {v for k, v in fixed.items() if k.endswith(":method")} == {"l1"}
