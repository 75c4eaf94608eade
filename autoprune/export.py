"""Apply a chosen policy for real: re-prune the dense model, fine-tune longer, evaluate on
the TEST split, and export weights + policy.json + report. Rebuild without unpickling."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autoprune import study as studies
from autoprune.config import human
from autoprune.confirm import choose_trial
from autoprune.data import Task
from autoprune.device import Runtime, torch_threads
from autoprune.errors import UserError
from autoprune.measure import count_flops, count_nonzeros, count_params, latency_ms
from autoprune.policy import Policy
from autoprune.prune import apply_policy
from autoprune.replay import prepare, recover
from autoprune.task import runtime_of
from autoprune.train import evaluate, load_weights, model_device, save_state


def apply_trial(
    study: optuna.Study,
    *,
    trial_number: int | None,
    out_dir: Path,
    policy_file: Path | None = None,
    finetune_steps: int,
    data_root: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-apply a trial's policy (or the policy in ``policy_file``) to the study's dense
    checkpoint, fine-tune, evaluate on the test split, export. ``device`` overrides the
    study's (a study searched on a GPU can be applied on a CPU, and the reverse)."""
    info = studies.info(study)
    if policy_file is not None:
        policy, trial = Policy.load(policy_file), None
    else:
        trial = choose_trial(study, trial_number)
        policy = Policy.from_dict(trial.user_attrs["policy"], source=f"trial {trial.number} policy")
    config, task, dense, pruner = prepare(info, study_name=study.study_name, data_root=data_root, device=device)
    rt = runtime_of(config, task)
    example = task.example_input()
    source = f"trial {trial.number}" if trial else str(policy_file)
    with torch_threads(config.threads):
        model, resolved = recover(pruner, policy, task, config, steps=finetune_steps, progress=progress,
                                  desc=f"fine-tune {source}", runtime=rt)
        report = {
            "study": study.study_name,
            "trial": trial.number if trial else None,
            "policy_source": source,
            "finetune_steps": finetune_steps,
            "search_val_accuracy": trial.values[0] if trial else None,
            "dense": summary(copy.deepcopy(dense).to(rt.device), task, example, rt),
            "pruned": summary(model, task, example, rt),
            "units": {"flops": info["units"]["flops"], "accuracy": "top-1 on the TEST split",
                      "latency_ms": f"median forward of batch 64 on {rt.describe()}"},
        }
        model.cpu()  # exported weights do not depend on the device
    resolved = Policy(groups=resolved.groups, distill=resolved.distill, meta={
        "model": config.model, "dataset": config.dataset, "input_shape": list(example.shape[1:]),
        "num_classes": task.num_classes, "dense_sha256": info["dense"]["sha256"], "ignored": info["ignored"],
        "round_to": config.round_to, "min_channels": config.min_channels,
        "study": study.study_name, "trial": trial.number if trial else None,
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved.save(out_dir / "policy.json")
    save_state(model, out_dir / "model.pt", study=study.study_name, policy=source)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(format_report(report))
    return report


def summary(model: nn.Module, task: Task, example: torch.Tensor, runtime: Runtime | None = None) -> dict[str, Any]:
    """Test accuracy, FLOPs (fvcore, batch 1), parameters, non-zeros and latency of ``model``,
    measured where it lives."""
    rt = runtime if runtime is not None else Runtime()
    example = example.to(model_device(model))
    return {
        "test_accuracy": evaluate(model, task.test, amp=rt.amp, workers=rt.workers),
        "flops": count_flops(model, example),
        "params": count_params(model),
        "nonzeros": count_nonzeros(model),
        "latency_ms": round(latency_ms(model, example), 3),
    }


def format_report(report: dict[str, Any]) -> str:
    d, p = report["dense"], report["pruned"]
    rows = [
        ("test accuracy", f"{100 * d['test_accuracy']:.2f}%", f"{100 * p['test_accuracy']:.2f}%",
         f"{100 * (p['test_accuracy'] - d['test_accuracy']):+.2f} pt"),
        ("FLOPs", human(d["flops"]), human(p["flops"]), f"{p['flops'] / d['flops']:.3f}x"),
        ("params", human(d["params"]), human(p["params"]), f"{p['params'] / d['params']:.3f}x"),
        ("nonzero params", human(d["nonzeros"]), human(p["nonzeros"]), f"{p['nonzeros'] / d['nonzeros']:.3f}x"),
        ("latency, batch 64", f"{d['latency_ms']:.2f} ms", f"{p['latency_ms']:.2f} ms",
         f"{p['latency_ms'] / d['latency_ms']:.3f}x"),
    ]
    lines = [
        f"# {report['study']}, {report['policy_source']}: dense vs pruned",
        "",
        f"Fine-tuned {report['finetune_steps']} steps after pruning."
        + (f" Search-val accuracy during the search was {100 * report['search_val_accuracy']:.2f}%."
           if report["search_val_accuracy"] is not None else ""),
        "",
        "| | dense | pruned | change |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    lines += ["", f"FLOPs: {report['units']['flops']}. Latency: {report['units']['latency_ms']}.", ""]
    return "\n".join(lines)


def load_pruned(dense: nn.Module, policy_path: Path, weights_path: Path) -> nn.Module:
    """Rebuild an exported pruned model from the dense model (architecture and checkpoint),
    ``policy.json`` and ``model.pt``, loading tensors only (``weights_only=True``)."""
    policy = Policy.load(policy_path)
    if any(g.kept_indices is None and g.method != "unstructured" for g in policy.groups.values()):
        raise UserError(f"{policy_path} has no kept_indices: export it with 'autoprune apply'")
    shape = policy.meta.get("input_shape")
    if not shape:
        raise UserError(f"{policy_path} has no meta.input_shape")
    model, _ = apply_policy(dense, policy, example_input=torch.zeros(1, *shape))
    load_weights(model, weights_path)
    return model.eval()


def print_report(report: dict[str, Any], out_dir: Path) -> None:
    print(format_report(report))
    print(f"wrote {out_dir / 'model.pt'}, {out_dir / 'policy.json'}, {out_dir / 'report.md'}", file=sys.stderr)
