"""``--compute E``: the final round and the recovery that ship a model within E dense epochs.

The search spends its share of E on cheap trials (policy_search/run.py). Then the final round
takes the finalists: uniform L1 at the budget, Torch-Pruning's global magnitude at the budget,
and the best searched policy (``FINALISTS``). Each is pruned from the dense model, recovered
briefly (an equal share of the round's compute) and scored on search-val. A searched policy is
picked only if it beats both baselines there by ``MARGIN``; otherwise the better baseline is.
Where the search's share pays for too few trials (policy_search/plan.py, ``MIN_SEARCH_TRIALS``),
neither the search nor the round is run: uniform L1 ships. What is left of E
recovers the pick (``apply``'s recipe), which is then tested and exported. The round, the pick,
why, and every candidate's compute are stored in the study (``final``), so that ``front`` and
``apply --best`` read them back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna

from autoprune.core.budget import global_magnitude_policy, uniform_at_budget
from autoprune.core.compute import Ledger
from autoprune.core.loops import evaluate
from autoprune.core.measure.flops import count_flops, count_params
from autoprune.core.policy import Policy
from autoprune.core.prune import Pruner
from autoprune.core.units import human
from autoprune.policy_search import dashboard
from autoprune.policy_search import study as studies
from autoprune.policy_search.front import compute_spent
from autoprune.policy_search.plan import COMPUTE_SPLIT, skipped_reason
from autoprune.ship.replay import dense_file, prepare, recover
from autoprune.task.config import SearchConfig
from autoprune.task.setup import meter_of, runtime_of

#: a searched policy must beat the better baseline by this much search-val accuracy to be picked:
#: on a tie the baseline ships (its rule needs no search to trust)
MARGIN = 0.002
#: searched policies in the final round, next to uniform L1 and global magnitude (one: see
#: COMPUTE_SPLIT in policy_search/plan.py)
FINALISTS = 1


def steps_within(flops: float, model_flops: int, config: SearchConfig, eval_images: int) -> int:
    """Fine-tune steps of a model of ``model_flops`` per image that ``flops`` of compute pays for,
    after its BatchNorm recalibration and ``eval_images`` scored (the recovery every final-round
    candidate, the pick, and the benchmark's contenders get)."""
    overhead = (config.bn_batches * config.batch_size + eval_images) * model_flops
    return max(0, int((flops - overhead) // (3 * config.batch_size * model_flops)))


def finalists(study: optuna.Study, pruner: Pruner, info: dict[str, Any], config: SearchConfig) -> list[dict[str, Any]]:
    """The round's candidates, each {"name", "policy", "trial"}: the two baselines at the budget
    (a baseline that does not meet the params or latency budget is left out, with a note) and
    the ``FINALISTS`` best feasible trials by search-val score, each architecture once."""
    budget = info["budget"]
    out: list[dict[str, Any]] = [{"name": "uniform L1", "policy": uniform_at_budget(pruner, budget["flops"], "l1"),
                                  "trial": None}]
    try:
        out.append({"name": "global magnitude", "policy": global_magnitude_policy(pruner, budget["flops"]),
                    "trial": None})
    except ValueError as exc:  # Torch-Pruning rooted a group elsewhere: not replayable here
        print(f"final round: global magnitude left out: {exc}", file=sys.stderr)
    meter = meter_of(config, pruner.dense, pruner.example_input)
    kept = []
    for c in out:  # the trials met every budget; a baseline is checked against the params and latency ones
        if budget.get("params") is not None or (meter is not None and budget.get("latency")):
            model, resolved = pruner.apply(c["policy"])
            if budget.get("params") is not None and count_params(model) > budget["params"]:
                print(f"final round: {c['name']} is over the params budget, left out", file=sys.stderr)
                continue
            if meter is not None and budget.get("latency"):
                from autoprune.core.measure.latency import LatencyBudget

                if LatencyBudget(**budget["latency"]).violation(meter.measure(model, resolved.channels())) > 0:
                    print(f"final round: {c['name']} is over the latency budget, left out", file=sys.stderr)
                    continue
        kept.append(c)
    seen = {tuple(pruner.resolve(c["policy"], indices=False).channels().values()) for c in kept}
    searched = 0
    for t in studies.ranked_feasible(study):
        policy = Policy.from_dict(t.user_attrs["policy"], source=f"trial {t.number} policy")
        shape = tuple(policy.channels().values())
        if shape in seen:
            continue
        seen.add(shape)
        kept.append({"name": f"trial {t.number}", "policy": policy, "trial": t.number, "score": t.values[0]})
        searched += 1
        if searched == FINALISTS:
            break
    return kept


def final_round(study: optuna.Study, *, progress: bool = True) -> dict[str, Any]:
    """Run the final round of a study searched with ``--compute`` (once: a stored round is
    returned as it is) and store it as the study's ``final`` attribute."""
    if studies.FINAL_ATTR in study.user_attrs:
        return study.user_attrs[studies.FINAL_ATTR]
    info = studies.info(study)
    config, task, _, pruner = prepare(info, study_name=study.study_name, checkpoint=dense_file(info, None, None, progress))
    if not config.compute:
        raise ValueError(f"study {study.study_name!r} was not searched with --compute")
    rt = runtime_of(config, task)
    epoch = info["dense"]["epoch_flops"]
    total = config.compute * epoch
    searched = study.user_attrs.get(studies.SEARCH_COMPUTE_ATTR) or {}
    candidates = finalists(study, pruner, info, config)
    if searched.get("skipped"):  # no searched policy to weigh: only the first finalist is pruned and counted
        candidates = candidates[:1]
    share = COMPUTE_SPLIT["final"] * total / len(candidates)
    planned = []
    for c in candidates:
        model, resolved = pruner.apply(c["policy"])  # recover() prunes its own copy: this one is only counted
        flops, params = count_flops(model, pruner.example_input), count_params(model)
        del model
        # the search-val score comes out of the share
        planned.append((c, flops, params, steps_within(share, flops, config, len(task.val)), resolved))
    if searched.get("skipped"):
        # the search's share paid for too few trials for it to run (policy_search/plan.py), so the round
        # has no searched policy to weigh: the first finalist (uniform L1 where it meets the budget) ships
        # with all of E. (After a search of 10 trials or more, each finalist's share pays for 1.7 trials,
        # so the round's fine-tunes always get steps.)
        c, flops, params, _, resolved = planned[0]
        rows = [{"name": c["name"], "trial": None, "val_accuracy": None, "flops": flops, "params": params,
                 "steps": 0, "compute_flops": 0, "search_score": None, "policy": resolved.to_dict()}]
        pick = rows[0]
        reason = f"the search was not run: {skipped_reason(searched, config.compute)}; {c['name']} ships"
        if progress:
            print(f"final round: not run, {reason}", file=sys.stderr)
    else:
        rows = [_recovered_briefly(c, flops, params, steps, pruner, task, config, rt, progress)
                for c, flops, params, steps, _ in planned]
        pick, reason = choose(rows)
    spent = compute_spent(study)["flops"]["total"] + sum(r["compute_flops"] for r in rows)
    # the pick's test score and latency measurement (about 2,000 images) come out of what is left
    steps = steps_within(total - spent, pick["flops"], config, len(task.test) + 2_000)
    final = {"candidates": rows, "pick": pick["name"], "reason": reason, "recovery_steps": steps,
             "compute": {"budget_dense_epochs": config.compute, "split": dict(COMPUTE_SPLIT), "epoch_flops": epoch,
                         "final_flops": sum(r["compute_flops"] for r in rows)}}
    study.set_user_attr(studies.FINAL_ATTR, final)
    dashboard.publish(study)  # the note shows the round
    return final


def _recovered_briefly(c: dict[str, Any], flops: int, params: int, steps: int, pruner: Pruner, task: Any,
                       config: SearchConfig, rt: Any, progress: bool) -> dict[str, Any]:
    """One finalist pruned, recovered ``steps`` steps and scored on search-val: its row of the round."""
    ledger = Ledger()
    try:
        recovered, resolved = recover(pruner, c["policy"], task, config, steps=steps, runtime=rt, ledger=ledger,
                                      progress=progress, desc=f"final round: {c['name']}")
        acc = evaluate(recovered, task.val, amp=rt.amp, workers=rt.workers)
    finally:
        ledger.close()
    if progress:
        print(f"final round: {c['name']}: {human(flops)} FLOPs, {steps} steps, search-val {acc:.4f}", file=sys.stderr)
    return {"name": c["name"], "trial": c["trial"], "val_accuracy": acc, "flops": flops, "params": params,
            "steps": steps, "compute_flops": ledger.total, "search_score": c.get("score"), "policy": resolved.to_dict()}


def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The candidate to ship and why: the best searched policy if it beats the better baseline
    by ``MARGIN`` search-val accuracy, else the better baseline."""
    base = [r for r in rows if r["trial"] is None]
    searched = [r for r in rows if r["trial"] is not None]
    if not base:
        best = max(searched, key=lambda r: r["val_accuracy"])
        return best, f"{best['name']} scored best, and no baseline met the budget"
    b = max(base, key=lambda r: r["val_accuracy"])
    if not searched:
        return b, f"{b['name']} scored best; no searched policy was a new architecture"
    s = max(searched, key=lambda r: r["val_accuracy"])
    if s["val_accuracy"] > b["val_accuracy"] + MARGIN:
        return s, (f"{s['name']} scored {s['val_accuracy']:.4f} on search-val after its short recovery, "
                   f"{100 * (s['val_accuracy'] - b['val_accuracy']):+.2f} pt over {b['name']} ({b['val_accuracy']:.4f})")
    return b, (f"{b['name']} scored {b['val_accuracy']:.4f} on search-val after its short recovery; the best searched "
               f"policy, {s['name']}, scored {s['val_accuracy']:.4f}, not {100 * MARGIN:.1f} pt more")


def final_policy(study: optuna.Study) -> tuple[Policy, str, int] | None:
    """The final round's pick (policy, label, recovery steps), or None if the study has none."""
    final = study.user_attrs.get(studies.FINAL_ATTR)
    if not final:
        return None
    row = next(r for r in final["candidates"] if r["name"] == final["pick"])
    return Policy.from_dict(row["policy"], source="final round pick"), final["pick"], final["recovery_steps"]


def ship(study: optuna.Study, out_dir: Path, *, progress: bool = True, onnx: bool = True) -> dict[str, Any]:
    """The final round (if not run yet), then the pick recovered with the rest of E, tested on
    the test split and exported to ``out_dir`` (ship/apply.py). The report's compute adds up
    the search, the final round and the recovery."""
    from autoprune.ship.apply import apply_trial

    final_round(study, progress=progress)
    picked = final_policy(study)
    assert picked is not None
    policy, label, steps = picked
    return apply_trial(study, trial_number=None, policy=policy, source=f"final round pick: {label}", out_dir=out_dir,
                       finetune_steps=steps, onnx=onnx, progress=progress)
