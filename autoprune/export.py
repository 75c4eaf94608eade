"""Apply a chosen policy for real: re-prune the dense model, fine-tune longer, evaluate on
the TEST split, and export weights + policy.json + report. Rebuild without unpickling."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autoprune import study as studies
from autoprune.baseline import skeleton
from autoprune.config import SearchConfig, human
from autoprune.errors import UserError
from autoprune.measure import count_flops, count_nonzeros, count_params, latency_ms
from autoprune.policy import Policy
from autoprune.prune import Pruner
from autoprune.train import evaluate, file_sha256, finetune, load_weights, recalibrate_bn, save_state


def choose_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    if number is None:  # the best confirmed trial if 'autoprune confirm' ran, else the best search-val score
        from autoprune.confirm import best_confirmed

        best = best_confirmed(study) or studies.best_feasible(study)
        if best is None:
            raise UserError(f"study {study.study_name!r} has no completed feasible trial yet")
        return best
    done = {t.number: t for t in studies.completed(study)}
    if number not in done:
        raise UserError(
            f"trial {number} is not a completed trial of {study.study_name!r}; completed trials: "
            f"{', '.join(map(str, sorted(done))) or 'none'}"
        )
    return done[number]


def load_dense_for(study: optuna.Study, config: SearchConfig, example_task: Any) -> nn.Module:
    dense_info = studies.info(study)["dense"]
    path = Path(dense_info["checkpoint"])
    if not path.is_file():
        raise UserError(f"the study's dense checkpoint {path} is missing (re-run the search on this machine, or copy it there)")
    if file_sha256(path) != dense_info["sha256"]:
        raise UserError(f"dense checkpoint {path} changed since the search (sha256 differs); refusing to apply")
    model = skeleton(config, example_task)
    load_weights(model, path)
    return model.eval()


def prepare(study: optuna.Study, *, data_root: str | None = None) -> tuple[SearchConfig, Any, nn.Module, Pruner]:
    """The stored config, the task, the verified dense model and a pruner for them."""
    from autoprune.pipeline import calibration_of, load_config_task

    info = studies.info(study)
    if info["dense"].get("checkpoint") is None:
        raise UserError(
            f"study {study.study_name!r} was searched on an in-memory model through the Python API; apply its "
            "policies in Python: autoprune.apply_policy(model, autoprune.Policy.from_dict(trial.user_attrs['policy']), ...)"
        )
    config = SearchConfig.from_dict(info["config"], source="stored study config")
    if data_root:
        config.data_root = data_root
    torch.set_num_threads(config.num_threads())
    task = load_config_task(config)
    dense = load_dense_for(study, config, task)
    pruner = Pruner(
        dense, task.example_input(), ignored=info["ignored"],
        calibration=calibration_of(config, task.train_x, task.train_y),
        seed=config.seed, round_to=config.round_to, min_channels=config.min_channels,
    )
    return config, task, dense, pruner


def recover(
    pruner: Pruner, policy: Policy, task: Any, config: SearchConfig, *, steps: int, progress: bool = False,
    desc: str = "fine-tune",
) -> tuple[nn.Module, Policy]:
    """Prune the dense model with ``policy``, recalibrate BatchNorm and fine-tune ``steps``
    mini-batches (distilled from the dense model if the policy says so); eval mode."""
    model, resolved = pruner.apply(policy)
    recalibrate_bn(model, task.train_x, num_batches=config.bn_batches, batch_size=config.batch_size, seed=config.seed)
    finetune(model, task.train_x, task.train_y, steps=steps, batch_size=config.batch_size,
             lr=config.finetune_lr, seed=config.seed, teacher=pruner.dense if resolved.distill else None,
             progress=progress, desc=desc)
    return model.eval(), resolved


def apply_trial(
    study: optuna.Study,
    *,
    trial_number: int | None,
    out_dir: Path,
    policy_file: Path | None = None,
    finetune_steps: int,
    data_root: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-apply a trial's policy (or the policy in ``policy_file``) to the study's dense
    checkpoint, fine-tune, evaluate on the test split, export."""
    config, task, dense, pruner = prepare(study, data_root=data_root)
    info = studies.info(study)
    example = task.example_input()
    if policy_file is not None:
        policy, trial = Policy.load(policy_file), None
    else:
        trial = choose_trial(study, trial_number)
        policy = Policy.from_dict(trial.user_attrs["policy"], source=f"trial {trial.number} policy")
    source = f"trial {trial.number}" if trial else str(policy_file)
    model, resolved = recover(pruner, policy, task, config, steps=finetune_steps, progress=progress,
                              desc=f"fine-tune {source}")
    report = {
        "study": study.study_name,
        "trial": trial.number if trial else None,
        "policy_source": source,
        "finetune_steps": finetune_steps,
        "search_val_accuracy": trial.values[0] if trial else None,
        "dense": summary(dense, task, example),
        "pruned": summary(model, task, example),
        "units": {"flops": info["units"]["flops"], "accuracy": "top-1 on the TEST split",
                  "latency_ms": f"median forward of batch 64, {torch.get_num_threads()} CPU thread(s)"},
    }
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


def summary(model: nn.Module, task: Any, example: torch.Tensor) -> dict[str, Any]:
    return {
        "test_accuracy": evaluate(model, task.test_x, task.test_y),
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
        ("CPU latency, batch 64", f"{d['latency_ms']:.2f} ms", f"{p['latency_ms']:.2f} ms",
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
    pruner = Pruner(dense, torch.zeros(1, *shape), ignored=policy.meta.get("ignored", []),
                    round_to=policy.meta.get("round_to", 1), min_channels=policy.meta.get("min_channels", 1))
    model, _ = pruner.apply(policy)
    load_weights(model, weights_path)
    return model.eval()


def print_report(report: dict[str, Any], out_dir: Path) -> None:
    print(format_report(report))
    print(f"wrote {out_dir / 'model.pt'}, {out_dir / 'policy.json'}, {out_dir / 'report.md'}", file=sys.stderr)
