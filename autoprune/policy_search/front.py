"""Reading a study back: the Pareto front as a table, CSV, JSON and a PNG plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import optuna

from autoprune.core.units import human
from autoprune.policy_search import study as studies

COLUMNS = ("trial", "feasible", "accuracy", "accuracy_before_finetune", "flops", "flops_ratio", "params",
           "nonzeros", "latency_ms", "latency_ratio", "compute", "methods", "warm_start")


def trial_row(trial: optuna.trial.FrozenTrial, dense_flops: int) -> dict[str, Any]:
    attrs = trial.user_attrs
    methods = sorted({g["method"] for g in attrs.get("policy", {}).get("groups", {}).values()})
    return {
        "trial": trial.number,
        "feasible": studies.is_feasible(trial),
        "accuracy": trial.values[0],
        "accuracy_before_finetune": attrs.get("accuracy_before_finetune"),
        "flops": int(trial.values[1]),
        "flops_ratio": trial.values[1] / dense_flops,
        "params": attrs.get("params"),
        "nonzeros": attrs.get("nonzeros"),
        # with --budget-latency: measured against the dense model (latency.py); else None
        "latency_ms": attrs.get("latency", {}).get("ms"),
        "latency_ratio": attrs.get("latency", {}).get("ratio"),
        # what the trial spent, in dense epochs (core/compute.py); None in studies made before 2026-12-06
        "compute": attrs.get("compute", {}).get("dense_epochs"),
        "methods": "+".join(methods),
        "warm_start": attrs.get("warm_start", ""),
        "channels": attrs.get("channels", {}),
    }


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Pareto-optimal COMPLETE trials (feasible ones marked), sorted by FLOPs."""
    dense_flops = studies.info(study)["dense"]["flops"]
    front = studies.pareto_front(studies.completed(study), list(study.directions))
    return [trial_row(t, dense_flops) for t in front]


def format_table(rows: list[dict[str, Any]], *, dense: dict[str, Any] | None = None) -> str:
    timed = any(r.get("latency_ms") is not None for r in rows)  # a search with --budget-latency
    latency = f"  {'latency':>16}" if timed else ""
    header = (f"{'trial':>5}  {'feasible':>8}  {'val acc':>7}  {'before ft':>9}  {'FLOPs':>7}  {'of dense':>8}  "
              f"{'params':>7}  {'nonzeros':>8}{latency}  {'compute':>7}  methods")
    lines = [header, "-" * len(header)]
    if dense:
        lines.append(f"{'dense':>5}  {'':>8}  {dense['val_accuracy']:7.4f}  {'':>9}  {human(dense['flops']):>7}  "
                     f"{1:8.3f}  {human(dense['params']):>7}  {'':>8}" + (f"  {'1.000':>16}" if timed else "") + f"  {'':>7}")
    for r in rows:
        before = "" if r["accuracy_before_finetune"] is None else f"{r['accuracy_before_finetune']:.4f}"
        ms = f"  {r['latency_ratio']:.3f} ({r['latency_ms']:.3g} ms)".rjust(18) if r.get("latency_ms") is not None else (
            f"  {'':>16}" if timed else "")
        lines.append(
            f"{r['trial']:>5}  {'yes' if r['feasible'] else 'NO':>8}  {r['accuracy']:7.4f}  {before:>9}  "
            f"{human(r['flops']):>7}  {r['flops_ratio']:8.3f}  {human(r['params'] or 0):>7}  "
            f"{human(r['nonzeros'] or 0):>8}{ms}  {'' if r.get('compute') is None else format(r['compute'], '.3f'):>7}"
            f"  {r['methods']}{'  (' + r['warm_start'] + ')' if r['warm_start'] else ''}"
        )
    return "\n".join(lines)


def compute_spent(study: optuna.Study) -> dict[str, Any]:
    """What the search spent, in FLOPs and in dense epochs (core/compute.py): every trial's,
    whatever its state, the reference curves' (measured once per dense model, then cached) and
    ``autoprune confirm``'s runs. Training the dense model is not included: it is the starting
    point of every contender."""
    epoch = studies.info(study)["dense"].get("epoch_flops")
    trials = study.get_trials(deepcopy=False)
    confirmed = [r for k, v in study.user_attrs.items() if k.startswith("confirm:") for r in v.get("runs", [])]
    spent = {"trials": studies.trials_compute(study, trials),
             "references": sum(int(p.get("compute_flops", 0)) for points in references_of(study).values()
                               for p in points),
             "confirm": sum(int(r.get("compute_flops", 0)) for r in confirmed),
             # --compute's final round (ship/final.py)
             "final": int(study.user_attrs.get(studies.FINAL_ATTR, {}).get("compute", {}).get("final_flops", 0))}
    spent["total"] = sum(spent.values())
    return {"flops": spent, "epoch_flops": epoch, "trials": len(trials),
            "dense_epochs": {k: round(v / epoch, 4) for k, v in spent.items()} if epoch else None,
            "dense_training_epochs": studies.info(study)["dense"].get("training_dense_epochs")}


def format_compute(study: optuna.Study) -> str:
    """One line: the search's compute in dense epochs, split into trials and reference curves."""
    c = compute_spent(study)
    if c["dense_epochs"] is None:
        return "compute: not recorded (a study made before 2026-12-06)"
    d = c["dense_epochs"]
    confirm = f", {d['confirm']:.2f} in autoprune confirm" if c["flops"]["confirm"] else ""
    confirm += f", {d['final']:.2f} in the final round" if c["flops"]["final"] else ""
    return (f"compute: {d['total']:.2f} dense epochs ({d['trials']:.2f} in {c['trials']} trials, "
            f"{d['references']:.2f} in the reference curves{confirm}; 1 dense epoch = {human(c['epoch_flops'])} "
            "FLOPs: every train image forward and backward through the dense model)"
            + (f"; apart from it, the dense baseline trained {c['dense_training_epochs']} dense epochs"
               if c["dense_training_epochs"] else ""))


def format_final(final: dict[str, Any]) -> str:
    """The final round as a table, the pick and why."""
    lines = ["final round (each recovered briefly, scored on search-val):",
             f"{'candidate':<18} {'FLOPs':>7} {'steps':>6} {'search-val':>10}  compute (dense epochs)"]
    epoch = final["compute"]["epoch_flops"]
    for r in final["candidates"]:
        de = f"{r['compute_flops'] / epoch:.3f}"
        score = "not run" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        lines.append(f"{r['name'] + (' *' if r['name'] == final['pick'] else ''):<18} {human(r['flops']):>7} "
                     f"{r['steps']:>6} {score:>10}  {de}")
    lines.append(f"picked {final['pick']}: {final['reason']}; it is recovered for {final['recovery_steps']} steps, "
                 "what is left of --compute")
    return "\n".join(lines)


def references_of(study: optuna.Study) -> dict[str, list[dict[str, Any]]]:
    """The study's reference curves (see reference.py): {rule: [{"flops", "accuracy"}]}."""
    return study.user_attrs.get("references", {}).get("curves", {})


def hypervolumes(study: optuna.Study) -> dict[str, Any]:
    """Hypervolume of the feasible front and of each reference curve, with the reference point
    (accuracy 0, FLOPs = the budget) and FLOPs as a fraction of the budget."""
    from autoprune.policy_search.reference import hypervolume

    budget = studies.info(study)["budget"]["flops"]
    feasible = [t for t in studies.completed(study) if studies.is_feasible(t)]
    out: dict[str, Any] = {"reference_point": {"accuracy": 0.0, "flops": budget},
                           "front": hypervolume([(t.values[0], t.values[1]) for t in feasible], max_flops=budget)}
    for rule, points in references_of(study).items():
        out[rule] = hypervolume([(p["accuracy"], p["flops"]) for p in points], max_flops=budget)
    return out


#: FLOPs within this fraction of a reference point count as no more than it
LEVEL_TOLERANCE = 0.01


def against_references(study: optuna.Study) -> list[dict[str, Any]]:
    """For each reference point: the best feasible trial with no more FLOPs (within
    ``LEVEL_TOLERANCE``: the solvers land a few hundred FLOPs either side of a level), and its
    accuracy (``front``; ``trial`` None if no trial is that small)."""
    feasible = [t for t in studies.completed(study) if studies.is_feasible(t)]
    rows = []
    for rule, points in references_of(study).items():
        for p in sorted(points, key=lambda p: p["flops"]):
            under = [t for t in feasible if t.values[1] <= p["flops"] * (1 + LEVEL_TOLERANCE)]
            best = max(under, key=lambda t: (t.values[0], -t.values[1]), default=None)
            rows.append({"rule": rule, "flops": p["flops"], "accuracy": p["accuracy"],
                         "trial": best.number if best else None, "front": best.values[0] if best else None})
    return rows


def format_references(study: optuna.Study) -> str:
    refs = references_of(study)
    if not refs:
        return ""
    dense_flops = studies.info(study)["dense"]["flops"]
    steps = study.user_attrs.get("references", {}).get("steps")
    lines = [f"reference curves (the trials' recovery: {steps} fine-tune steps):",
             f"{'rule':>18}  {'val acc':>7}  {'FLOPs':>7}  {'of dense':>8}"]
    for rule, points in refs.items():
        for p in sorted(points, key=lambda p: p["flops"]):
            lines.append(f"{rule:>18}  {p['accuracy']:7.4f}  {human(p['flops']):>7}  {p['flops'] / dense_flops:8.3f}")
    levels = against_references(study)
    if levels:
        lines.append(f"the front at each reference point (its best feasible trial with no more FLOPs, "
                     f"{LEVEL_TOLERANCE:.0%} tolerance):")
        for r in levels:
            front = f"{r['front']:.4f} (trial {r['trial']})" if r["trial"] is not None else "none"
            lines.append(f"{r['rule']:>18}  {r['accuracy']:7.4f}  {human(r['flops']):>7}  front {front}, "
                         f"{r['front'] - r['accuracy']:+.4f}" if r["trial"] is not None else
                         f"{r['rule']:>18}  {r['accuracy']:7.4f}  {human(r['flops']):>7}  front: no trial this small")
    hv = hypervolumes(study)
    point = hv.pop("reference_point")
    lines.append(f"hypervolume (reference point: accuracy 0, {human(point['flops'])} FLOPs = the budget; FLOPs as a "
                 "fraction of it): " + ", ".join(f"{k} {v:.4f}" for k, v in hv.items()))
    return "\n".join(lines)


def plot_front(study: optuna.Study, path: Path) -> Path:
    """Accuracy vs FLOPs: every fine-tuned trial, the front, the dense model and the budget."""
    from matplotlib.figure import (
        Figure,  # no pyplot: the caller's matplotlib backend is left alone
    )

    info = studies.info(study)
    dense = info["dense"]
    trials = studies.completed(study)
    front = studies.pareto_front(trials, list(study.directions))
    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.subplots()
    ax.scatter([t.values[1] / 1e6 for t in trials], [100 * t.values[0] for t in trials],
               s=14, c="#9aa5b1", label=f"trials ({len(trials)})", zorder=2)
    fx = [t.values[1] / 1e6 for t in front]
    fy = [100 * t.values[0] for t in front]
    budget_x = info["budget"]["flops"] / 1e6
    ax.step(fx + [max(budget_x, fx[-1])] if fx else [], fy + fy[-1:], where="post", c="#d1495b", lw=1.5, zorder=3)
    ax.scatter(fx, fy, s=30, c="#d1495b", label="Pareto front", zorder=4)
    for t in trials:
        if t.user_attrs.get("warm_start"):
            ax.scatter([t.values[1] / 1e6], [100 * t.values[0]], marker="s", s=70, facecolors="none",
                       edgecolors="k", label=t.user_attrs["warm_start"] + " (warm start)", zorder=5)
    for (rule, points), marker in zip(references_of(study).items(), ("s", "^"), strict=False):
        pts = sorted(points, key=lambda p: p["flops"])
        ax.plot([p["flops"] / 1e6 for p in pts], [100 * p["accuracy"] for p in pts], ls=":", marker=marker, ms=5,
                label=f"{rule} (reference)", zorder=3)
    ax.scatter([dense["flops"] / 1e6], [100 * dense["val_accuracy"]], marker="*", s=160, c="#00798c",
               label="dense", zorder=5)
    ax.axvline(budget_x, ls="--", c="k", lw=1, label="FLOPs budget")
    ax.set_xlabel("FLOPs (M; fvcore, 1 multiply-add = 1 flop)")
    ax.set_ylabel("search-val accuracy (%)")
    cfg = info["config"]
    ax.set_title(f"{study.study_name}: {cfg['model']} on {cfg['dataset']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_front(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """front.csv, front.json and front.png under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = front_rows(study)
    paths = {"csv": out_dir / "front.csv", "json": out_dir / "front.json", "png": out_dir / "front.png"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    info = studies.info(study)
    paths["json"].write_text(json.dumps(
        {"study": study.study_name, "dense": info["dense"], "budget": info["budget"], "front": rows,
         "references": references_of(study), "against_references": against_references(study),
         "compute": compute_spent(study),
         "hypervolume": hypervolumes(study)}, indent=1))
    plot_front(study, paths["png"])
    return paths
