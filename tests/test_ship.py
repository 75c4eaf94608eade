"""``--compute E``: from a budget to a shipped model within E dense epochs. The search spends its
share on cheap trials, the final round puts uniform L1 and global magnitude next to the best
searched policies, the pick is recovered with what is left, and ``apply --best`` repeats it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from conftest import run_cli, run_in_process

from autoprune.core.budget import (
    global_magnitude,
    global_magnitude_policy,
    uniform_at_budget,
)
from autoprune.core.groups import resolve_ignore
from autoprune.core.measure.flops import count_flops, count_params
from autoprune.core.prune import Pruner
from autoprune.errors import UserError
from autoprune.policy_search.plan import (
    COMPUTE_SPLIT,
    MIN_SEARCH_TRIALS,
    plan,
    search_compute,
)
from autoprune.ship.final import MARGIN, choose, finalists
from autoprune.task.config import COMPUTE_RECIPE, SearchConfig

E = 40  # on digits (a tiny train split) a trial costs 0.29 dense epochs: 40 buys a search of 13
SHIP = ["--dataset", "digits", "--val-size", "300", "--dense-epochs", "4", "--batch-size", "32", "--threads", "1",
        "--quiet"]


def test_global_magnitude_becomes_a_policy_that_rebuilds_its_network(digits_dense):
    model, task = digits_dense
    example = task.example_input()
    pruner = Pruner(model, example, ignored=resolve_ignore(model, example))
    target = int(0.3 * count_flops(model, example))
    reference = global_magnitude(model, example, pruner.ignored, target)
    policy = global_magnitude_policy(pruner, target)
    rebuilt, _ = pruner.apply(policy)
    assert count_flops(rebuilt, example) == count_flops(reference, example) <= target
    kept = {g: c.kept for g, c in policy.groups.items()}
    assert len(set(kept.values())) > 1, kept  # one ranking across groups: not a uniform ratio
    x = torch.randn(5, *example.shape[1:])
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), reference.eval()(x), atol=1e-5)


def test_compute_sets_the_cheap_recipe_where_the_keys_were_not_given():
    config = SearchConfig.from_dict({"budget_flops": "0.5", "compute": 2})
    for key, value in COMPUTE_RECIPE.items():
        assert getattr(config, key) == value, key
    mine = SearchConfig.from_dict({"budget_flops": "0.5", "compute": 2, "finetune_steps": 40, "space": "front"})
    assert (mine.finetune_steps, mine.space, mine.reconstruct) == (40, "front", True)
    plain = SearchConfig.from_dict({"budget_flops": "0.5"})
    assert (plain.finetune_steps, plain.space, plain.reconstruct) == (150, "front", False)
    with pytest.raises(UserError, match="compute = 0 must be > 0"):
        SearchConfig.from_dict({"budget_flops": "0.5", "compute": 0})
    with pytest.raises(UserError, match="runs in one process"):
        SearchConfig.from_dict({"budget_flops": "0.5", "compute": 2, "workers": 2})


def test_the_python_api_refuses_a_compute_budget_in_one_line():
    import autoprune

    with pytest.raises(UserError, match="compute=2: .*autoprune search --checkpoint FILE --compute E"):
        autoprune.search(torch.nn.Linear(2, 2), None, None, torch.zeros(1, 2), compute=2)


def test_a_searched_policy_ships_only_if_it_beats_both_baselines_by_the_margin():
    def row(name, acc, trial=None):
        return {"name": name, "val_accuracy": acc, "trial": trial}

    base = [row("uniform L1", 0.90), row("global magnitude", 0.91)]
    assert choose(base + [row("trial 3", 0.91 + MARGIN / 2, 3)])[0]["name"] == "global magnitude"
    pick, why = choose(base + [row("trial 3", 0.91 + 2 * MARGIN, 3), row("trial 5", 0.905, 5)])
    assert pick["name"] == "trial 3" and "over global magnitude" in why
    assert choose(base)[0]["name"] == "global magnitude"


def test_a_baseline_over_the_params_budget_is_left_out_of_the_final_round(digits_dense, capsys):
    model, task = digits_dense
    example = task.example_input()
    pruner = Pruner(model, example, ignored=resolve_ignore(model, example))
    target = int(0.3 * count_flops(model, example))
    params = {name: count_params(pruner.apply(policy)[0]) for name, policy in (
        ("uniform L1", uniform_at_budget(pruner, target, "l1")), ("global magnitude", global_magnitude_policy(pruner, target)))}
    small, large = sorted(params, key=params.get)
    assert params[small] < params[large], params
    config = SearchConfig.from_dict({"budget_flops": "0.3"})
    empty = optuna.create_study(directions=["maximize", "minimize"])  # no searched finalist: the baselines alone
    kept = finalists(empty, pruner, {"budget": {"flops": target, "params": params[large] - 1}}, config)
    assert [c["name"] for c in kept] == [small]
    assert f"final round: {large} is over the params budget, left out" in capsys.readouterr().err
    both = finalists(empty, pruner, {"budget": {"flops": target, "params": params[large]}}, config)
    assert [c["name"] for c in both] == ["uniform L1", "global magnitude"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ship")
    r = run_cli("search", "--budget-flops", "0.5", "--compute", str(E), "--study", "ship", "--out", "out", *SHIP,
                cwd=work)
    assert r.returncode == 0, r.stderr
    assert "final round" in r.stdout and "picked " in r.stdout, r.stdout
    return work


def test_one_command_ships_a_model_within_the_compute(shipped):
    out = shipped / "out"
    assert {"model.pt", "policy.json", "model.onnx", "report.json", "report.md", "front.csv"} <= {
        p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    compute = report["compute"]
    assert compute["budget_dense_epochs"] == E
    search = compute["search"]["dense_epochs"]
    assert search["final"] > 0 and search["references"] == 0  # uniform and global compete in the final round
    total = search["total"] + compute["apply"]["dense_epochs"]
    assert 0.8 * E < total <= E, total  # the recovery gets what is left, and no more
    assert report["pruned"]["flops"] <= 0.5 * report["dense"]["flops"]
    assert report["policy_source"].startswith("final round pick: ")
    assert f"within --compute {E}" in (out / "report.md").read_text()


def test_the_search_stops_at_its_share_and_the_final_round_keeps_the_baselines(shipped):
    study = optuna.load_study(study_name="ship", storage=f"sqlite:///{shipped}/studies/ship.db")
    info = study.user_attrs["autoprune"]
    limit = COMPUTE_SPLIT["search"] * E * info["dense"]["epoch_flops"]
    spent = [t.user_attrs["compute"]["total_flops"] for t in study.trials]
    assert sum(spent[:-1]) < limit <= sum(spent)  # stopped after the trial that reached the share
    assert info["config"]["finetune_steps"] == 0 and info["config"]["reconstruct"]
    final = study.user_attrs["final"]
    names = [c["name"] for c in final["candidates"]]
    assert names[:2] == ["uniform L1", "global magnitude"]
    assert final["pick"] in names and final["reason"]
    for c in final["candidates"]:
        assert c["flops"] <= info["budget"]["flops"] and c["steps"] > 0


def test_apply_best_repeats_the_shipped_recovery(shipped, tmp_path):
    r = run_in_process("apply", "--study", "ship", "--best", "--no-onnx", "--quiet", "--out", str(tmp_path / "again"),
                       cwd=shipped)
    assert r.returncode == 0, r.stderr
    first = json.loads((shipped / "out" / "report.json").read_text())
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["policy_source"] == first["policy_source"]
    assert again["finetune_steps"] == first["finetune_steps"] > 0
    assert again["pruned"]["test_accuracy"] == first["pruned"]["test_accuracy"]  # same policy, steps and seed
    r = run_in_process("front", "--study", "ship", cwd=shipped)
    assert "in the final round" in r.stdout and "picked " in r.stdout and "uniform L1" in r.stdout


def test_the_dashboard_note_shows_the_final_round(shipped):
    from optuna_dashboard._note import get_note_from_system_attrs

    study = optuna.load_study(study_name="ship", storage=f"sqlite:///{shipped}/studies/ship.db")
    body = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), None)["body"]
    pick = study.user_attrs["final"]["pick"]
    assert "**Final round**" in body and f"picked {pick}: " in body and "global magnitude" in body, body


def test_the_search_spends_what_it_predicted(shipped):
    study = optuna.load_study(study_name="ship", storage=f"sqlite:///{shipped}/studies/ship.db")
    planned = study.user_attrs["search_compute"]
    assert planned["runs"] and planned["trials"] >= MIN_SEARCH_TRIALS and not planned["skipped"]
    measured = [t.user_attrs["compute"]["dense_epochs"] for t in study.trials if t.user_attrs.get("feasible")]
    # the first trials also pay the once-per-search passes (the refit's targets, importance calibration)
    assert sum(measured) == pytest.approx(len(measured) * planned["per_trial_dense_epochs"] + planned["once_dense_epochs"],
                                          rel=0.05)
    assert sorted(measured)[len(measured) // 2] == pytest.approx(planned["per_trial_dense_epochs"], rel=0.05)
    assert abs(len(study.trials) - planned["trials"]) <= 1


def test_the_least_compute_it_advises_pays_for_a_search(digits_dense):
    model, task = digits_dense
    config = SearchConfig.from_dict({"budget_flops": "0.5", "compute": 1, "dataset": "digits", "val_size": 300,
                                     "batch_size": 32})
    the_plan = plan(model, task.example_input(), config)
    sizes = {"train_images": len(task.train), "bn_images": len(task.plain_train), "val_images": len(task.val)}
    least = search_compute(config, the_plan, **sizes).least_compute
    assert search_compute(replace(config, compute=least), the_plan, **sizes).runs
    assert not search_compute(replace(config, compute=least - 0.01), the_plan, **sizes).runs


def test_a_compute_too_small_to_search_ships_uniform_with_all_of_it(tmp_path):
    # --compute 5 on digits: the search's share pays for 1 trial, so none is run, nor the final round
    r = run_cli("search", "--budget-flops", "0.5", "--compute", "5", "--study", "tiny", "--out", "out", *SHIP,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "the search was not run" in r.stdout and "or more lets it search" in r.stdout, r.stdout
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    assert not study.trials and not study.user_attrs["search_compute"]["runs"]
    assert study.user_attrs["search_compute"]["skipped"]
    final = study.user_attrs["final"]
    assert final["pick"] == "uniform L1" and final["compute"]["final_flops"] == 0
    assert [c["val_accuracy"] for c in final["candidates"]] == [None]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["policy_source"] == "final round pick: uniform L1"
    # all of E recovers it: the steps the whole budget pays for, less its test score
    assert report["finetune_steps"] == final["recovery_steps"] > 0
    assert 0.95 * 5 <= report["compute"]["apply"]["dense_epochs"] <= 5
    r = run_in_process("front", "--study", "tiny", cwd=tmp_path)  # no front, but what shipped and why
    assert r.returncode == 0 and "search was not run" in r.stdout and "picked uniform L1" in r.stdout, r.stdout
    r = run_in_process("front", "--study", "tiny", "--format", "csv", cwd=tmp_path)
    assert r.returncode == 2 and "no front (the table format shows what shipped)" in r.stderr, r.stderr
