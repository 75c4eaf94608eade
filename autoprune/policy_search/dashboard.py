"""What optuna-dashboard shows of an autoprune study.

optuna-dashboard 0.21 reads feasibility only from the legacy trial system attribute
``constraints`` (a list; Optuna 5's ``trial.set_constraint`` writes ``constraints:<name>``,
which it never shows) and cuts user attributes at 1,024 characters. So, besides what Optuna
stores, each trial gets the legacy list, the study a note (``optuna_dashboard.save_note``:
task, dense model, budget, units, how to apply), two plotly charts (the front with the dense
model, the budget and any reference curves; keep ratios per group of the best trials) and
each completed trial its ``policy.json`` as an artifact, in a file-system artifact store
(``optuna-dashboard <storage> --artifact-dir <dir>`` shows them).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna

from autoprune.core.units import human
from autoprune.policy_search import study as studies
from autoprune.policy_search.front import format_compute, format_final

#: ids of the custom charts (saved again under the same id, so they are replaced, not added)
FRONT_PLOT = "autoprune-front"
KEEP_PLOT = "autoprune-keep-ratios"


def mark_constraints(trial: optuna.Trial, violations: dict[str, float]) -> None:
    """The legacy ``constraints`` list optuna-dashboard reads (values <= 0 are feasible)."""
    trial.study._storage.set_trial_system_attr(trial._trial_id, "constraints", [float(v) for v in violations.values()])


def upload_policy(trial: optuna.Trial, record: dict[str, Any], store: Any) -> None:
    """The trial's resolved policy as ``policy.json``, an artifact of the trial."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.json"
        path.write_text(json.dumps(record, indent=1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                             mimetype="application/json")


def note(study: optuna.Study) -> str:
    info = studies.info(study)
    cfg, dense, budget = info["config"], info["dense"], info["budget"]
    done = [t for t in studies.completed(study) if studies.is_feasible(t)]
    best = max(done, key=lambda t: t.values[0], default=None)
    lines = [
        f"- **Task**: `{cfg['model']}` on `{cfg['dataset']}`, input {tuple(info['input_shape'])}, "
        f"search-val {cfg.get('val_size')} images.",
        f"- **Dense model**: search-val accuracy {dense['val_accuracy']:.4f}, {human(dense['flops'])} FLOPs, "
        f"{human(dense['params'])} parameters.",
        f"- **Budget**: {human(budget['flops'])} FLOPs ({budget['flops'] / dense['flops']:.3f} of dense)"
        + (f", {human(budget['params'])} parameters" if budget.get("params") else "")
        + (f", latency {budget['latency']['text']}" + (" of dense" if budget["latency"]["kind"] == "fraction" else "")
           + f" (measured: {info['units'].get('latency', '')})" if budget.get("latency") else "") + ".",
        f"- **Search**: space `{cfg['space']}`, methods {', '.join(cfg['methods'])}, {cfg['finetune_steps']} fine-tune "
        f"steps per trial, sampler `{cfg['sampler']}`.",
        f"- **Units**: FLOPs: {info['units']['flops']}. Accuracy: {info['units']['accuracy']}. "
        f"Seconds: {info['units']['seconds']}.",
        "- **Feasibility**: trials over the budget are marked infeasible (toggle *Include infeasible trials*).",
        "- **Compute**: " + format_compute(study).removeprefix("compute: ") + ".",
    ]
    if info.get("excluded"):
        lines.append("- **Kept whole**: " + "; ".join(f"`{k}` ({v})" for k, v in info["excluded"].items()))
    if best is not None:
        lines.append(f"- **Best feasible trial so far**: {best.number} (search-val {best.values[0]:.4f}, "
                     f"{human(best.values[1])} FLOPs).")
    final = study.user_attrs.get(studies.FINAL_ATTR)
    if final:  # --compute: the round that chose what ships, as `autoprune front` prints it
        lines += ["- **Final round** (`--compute`), what `apply --best` ships:", "",
                  *("    " + line for line in format_final(final).splitlines())]
    lines = [f"# {study.study_name}", "", *lines]
    lines += [
        "", "**Apply the best policy** (re-prune, fine-tune, test, export model.pt, policy.json, model.onnx):", "",
        f"    autoprune apply --storage <this storage URL> --study {study.study_name} --best",
        "", "Each completed trial's `policy.json` is an artifact of the trial.",
    ]
    return "\n".join(lines)


def front_figure(study: optuna.Study, references: dict[str, list[dict[str, float]]] | None = None) -> Any:
    import plotly.graph_objects as go


    info = studies.info(study)
    dense, budget = info["dense"], info["budget"]
    trials = studies.completed(study)
    feasible = [t for t in trials if studies.is_feasible(t)]
    front = studies.pareto_front(feasible, list(study.directions))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[t.values[1] for t in trials], y=[t.values[0] for t in trials], mode="markers",
                             name="trials", marker={"color": "#9aa5b1"},
                             text=[f"trial {t.number}" for t in trials]))
    fig.add_trace(go.Scatter(x=[t.values[1] for t in front], y=[t.values[0] for t in front], mode="lines+markers",
                             name="Pareto front (feasible)", line={"shape": "hv", "color": "#d1495b"},
                             text=[f"trial {t.number}" for t in front]))
    for name, points in (references or {}).items():
        fig.add_trace(go.Scatter(x=[p["flops"] for p in points], y=[p["accuracy"] for p in points],
                                 mode="lines+markers", name=name, line={"dash": "dot"}))
    fig.add_trace(go.Scatter(x=[dense["flops"]], y=[dense["val_accuracy"]], mode="markers", name="dense",
                             marker={"symbol": "star", "size": 14, "color": "#00798c"}))
    fig.add_vline(x=budget["flops"], line_dash="dash", annotation_text="FLOPs budget")
    fig.update_layout(title=f"{study.study_name}: search-val accuracy against FLOPs",
                      xaxis_title="FLOPs (fvcore, 1 multiply-add = 1 flop)", yaxis_title="search-val accuracy")
    return fig


def keep_figure(study: optuna.Study, top: int = 5) -> Any:
    import plotly.graph_objects as go


    best = studies.ranked_feasible(study)[:top]
    fig = go.Figure()
    for t in best:
        groups = t.user_attrs.get("policy", {}).get("groups", {})
        ids = list(groups)
        fig.add_trace(go.Bar(x=ids, y=[g.get("kept", 0) / g.get("channels", 1) for g in groups.values()],
                             name=f"trial {t.number} ({t.values[0]:.4f})",
                             text=[f"{g.get('kept')}/{g.get('channels')} {g.get('method')}" for g in groups.values()]))
    fig.update_layout(barmode="group", title=f"kept channels per group, the {len(best)} best feasible trials",
                      xaxis_title="group (root layer)", yaxis_title="kept / channels", yaxis_range=[0, 1.05])
    return fig


def publish(study: optuna.Study, references: dict[str, list[dict[str, float]]] | None = None) -> None:
    """Write (or replace) the study's note and charts; called when a search run ends."""
    import optuna_dashboard


    if references is None:
        references = study.user_attrs.get("references", {}).get("curves")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna_dashboard.save_note(study, note(study))
        if studies.completed(study):
            optuna_dashboard.save_plotly_graph_object(study, front_figure(study, references), graph_object_id=FRONT_PLOT)
            optuna_dashboard.save_plotly_graph_object(study, keep_figure(study), graph_object_id=KEEP_PLOT)
