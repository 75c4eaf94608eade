"""Apply a chosen policy for real: re-prune the dense model, fine-tune longer, evaluate on
the TEST split, and export weights + policy.json + report. Rebuild without unpickling."""

from __future__ import annotations

import copy
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autoprune.core.checkpoints import load_weights, save_state
from autoprune.core.compute import Ledger, dense_epoch_flops
from autoprune.core.device import Runtime, torch_threads
from autoprune.core.loops import evaluate, model_device
from autoprune.core.measure.flops import (
    count_flops,
    count_nonzeros,
    count_params,
    latency_ms,
)
from autoprune.core.policy import Policy
from autoprune.core.prune import apply_policy
from autoprune.core.units import human
from autoprune.errors import UserError
from autoprune.policy_search import study as studies
from autoprune.policy_search.front import compute_spent
from autoprune.ship.confirm import choose_trial
from autoprune.ship.replay import dense_file, prepare, recover
from autoprune.task.setup import runtime_of
from autoprune.task.splits import Task


def apply_trial(
    study: optuna.Study,
    *,
    trial_number: int | None,
    out_dir: Path,
    policy_file: Path | None = None,
    finetune_steps: int,
    data_root: str | None = None,
    device: str | None = None,
    onnx: bool = True,
    quantize: str | None = None,
    prune_steps: int = 1,
    progress: bool = True,
    checkpoint: str | None = None,
    artifact_dir: str | None = None,
    policy: Policy | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Re-apply a trial's policy (or the policy in ``policy_file``, or ``policy``, labelled
    ``source``: the final round's pick) to the study's dense
    checkpoint, fine-tune, evaluate on the test split, export. ``device`` overrides the
    study's (a study searched on a GPU can be applied on a CPU, and the reverse).
    ``checkpoint`` / ``artifact_dir``: where the dense checkpoint is, if not where the study
    says (:func:`autoprune.artifacts.dense_checkpoint`)."""
    info = studies.info(study)
    if policy is not None:
        trial = None
    elif policy_file is not None:
        policy, trial = Policy.load(policy_file), None
    else:
        trial = choose_trial(study, trial_number)
        policy = Policy.from_dict(trial.user_attrs["policy"], source=f"trial {trial.number} policy")
    config, task, dense, pruner = prepare(info, study_name=study.study_name, data_root=data_root, device=device,
                                          checkpoint=dense_file(info, checkpoint, artifact_dir, progress))
    rt = runtime_of(config, task)
    example = task.example_input()
    source = source or (f"trial {trial.number}" if trial else str(policy_file))
    searched = policy_file is None  # a trial's or the final round's policy: the search's compute is this model's too
    missing = [g.id for g in pruner.groups if g.id not in policy.groups]
    if policy_file is not None and missing:
        print(f"{policy_file} has no entry for {len(missing)} group(s), kept whole: {', '.join(missing[:8])}"
              f"{', ...' if len(missing) > 8 else ''}", file=sys.stderr)
    ledger = Ledger()
    with torch_threads(config.threads):
        dense_on_device = copy.deepcopy(dense).to(rt.device)
        try:
            model, resolved = recover(pruner, policy, task, config, steps=finetune_steps, progress=progress,
                                      desc=f"fine-tune {source}", runtime=rt, prune_steps=prune_steps, ledger=ledger)
            pruned = summary(model, task, example, rt)  # the test score and PyTorch latency are charged too
        finally:
            ledger.close()  # the global hook goes, whatever happened
        epoch = info["dense"].get("epoch_flops") or dense_epoch_flops(info["dense"]["flops"], len(task.train))
        report = {
            "study": study.study_name,
            "trial": trial.number if trial else None,
            "policy_source": source,
            "finetune_steps": finetune_steps,
            "prune_steps": prune_steps,
            "search_val_accuracy": trial.values[0] if trial else None,
            "dense": summary(dense_on_device, task, example, rt),
            "pruned": pruned,
            # core/compute.py: this recovery (with its test score), and the search the study ran
            "compute": {"apply": ledger.record(epoch),
                        "search": compute_spent(study) if searched else None,
                        "budget_dense_epochs": config.compute},
            "units": {"flops": info["units"]["flops"], "accuracy": "top-1 on the TEST split",
                      "latency_ms": f"median forward of batch 64 on {rt.describe()}"},
        }
        model.cpu()  # exported weights do not depend on the device
        if onnx:
            report["onnx"] = ship_onnx(model, dense, task, out_dir, quantize=quantize, config=config)
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


def ship_onnx(model: nn.Module, dense: nn.Module, task: Task, out_dir: Path, *, quantize: str | None,
              config: Any) -> dict[str, Any]:
    """``model.onnx`` checked against PyTorch on 64 test images; latency of dense and pruned in
    PyTorch and onnxruntime (CPU, batch 64 and batch 1), measured side by side in shuffled
    rounds; with ``quantize="int8"``, ``model.int8.onnx`` with its test accuracy and size."""
    import random
    import tempfile

    from autoprune.core.measure import onnx as ox
    from autoprune.ship import onnx as shipped

    out_dir.mkdir(parents=True, exist_ok=True)
    example = task.example_input()
    path = ox.export(model, example, out_dir / "model.onnx")
    x_test, _ = next(task.test.batches(64))
    result: dict[str, Any] = {"path": path.name, "opset": ox.OPSET, "bytes": path.stat().st_size,
                              "check": shipped.check(path, model, x_test)}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = ox.export(dense, example, Path(tmp) / "dense.onnx")
        sessions = {"dense": ox.session(dense_path, threads=threads), "pruned": ox.session(path, threads=threads)}
        models = {"dense": dense.cpu().eval(), "pruned": model.eval()}
        samples: dict[tuple[str, str, int], list[float]] = {}
        jobs = [(who, runtime, batch) for who in ("dense", "pruned") for runtime in ("pytorch", "onnxruntime")
                for batch in (1, 64)]
        rng = random.Random(0)
        for round_ in range(6):  # round-robin in shuffled order: a slow spell hits every model alike
            rng.shuffle(jobs)
            for who, runtime, batch in jobs:
                x = example.expand(batch, *example.shape[1:]).contiguous()
                ms = (latency_ms(models[who], x, batch=batch, repeats=5, warmup=1) if runtime == "pytorch"
                      else ox.latency_ms(sessions[who], x, repeats=5, warmup=1))
                if round_:
                    samples.setdefault((who, runtime, batch), []).append(ms)
    result["latency_ms"] = {f"{runtime}, batch {batch}": {who: round(statistics.median(samples[(who, runtime, batch)]), 3)
                                                         for who in ("dense", "pruned")}
                            for runtime in ("pytorch", "onnxruntime") for batch in (1, 64)}
    result["latency_note"] = f"CPU, {threads} thread(s), median of 5 runs x 5 shuffled rounds"
    if quantize == "int8":
        gen = torch.Generator().manual_seed(config.seed)
        calib, _ = task.plain_train.take(torch.randperm(len(task.plain_train), generator=gen)[:256])
        q = shipped.quantize_int8(path, out_dir / "model.int8.onnx", calib)
        sess = ox.session(q, threads=threads)
        result["int8"] = {"path": q.name, "bytes": q.stat().st_size,
                          "test_accuracy": shipped.accuracy(sess, task.test.batches(256)),
                          "latency_ms_batch_64": round(ox.latency_ms(sess, example.expand(64, *example.shape[1:]).contiguous()), 3),
                          "calibration_images": len(calib)}
    return result


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
        f"Fine-tuned {report['finetune_steps']} steps after pruning"
        + (f" (pruned in {report['prune_steps']} steps, fine-tuned between them)." if report.get("prune_steps", 1) > 1 else ".")
        + (f" Search-val accuracy during the search was {100 * report['search_val_accuracy']:.2f}%."
           if report["search_val_accuracy"] is not None else ""),
        "",
        "| | dense | pruned | change |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    lines += ["", f"FLOPs: {report['units']['flops']}. Latency: {report['units']['latency_ms']}.", ""]
    compute = report.get("compute") or {}
    if compute.get("apply"):
        spent = compute["apply"]["dense_epochs"]
        search = (compute.get("search") or {}).get("dense_epochs") or {}
        lines += [f"Compute, in dense epochs (one pass of the train split through the dense model, forward and "
                  f"backward): this recovery and its test score {spent:.3f}"
                  + (f"; the search before it {search['total']:.3f} ({search['trials']:.3f} in trials, "
                     f"{search['references']:.3f} in reference curves, {search['confirm']:.3f} in confirm"
                     + (f", {search['final']:.3f} in the final round" if search.get("final") else "") + ")"
                     if search else "")
                  + (f"; together {spent + search['total']:.3f}" if search else "")
                  + (f", within --compute {compute['budget_dense_epochs']:g}" if compute.get("budget_dense_epochs")
                     and search else "") + ".", ""]
    onnx = report.get("onnx")
    if onnx:
        check = onnx["check"]
        lines += [f"ONNX: `{onnx['path']}` (opset {onnx['opset']}, dynamic batch, {human(onnx['bytes'])}B); onnxruntime "
                  f"agrees with PyTorch on {check['images']} test images (largest logit difference "
                  f"{check['max_abs_logit_difference']:.1e}, same top-1).", "",
                  f"| latency ({onnx['latency_note']}) | dense | pruned | speed-up |", "|---|---|---|---|"]
        for key, v in onnx["latency_ms"].items():
            lines.append(f"| {key} | {v['dense']:.2f} ms | {v['pruned']:.2f} ms | {v['dense'] / v['pruned']:.2f}x |")
        if "int8" in onnx:
            q = onnx["int8"]
            lines += ["", f"int8 (onnxruntime static quantization, {q['calibration_images']} calibration images): "
                      f"`{q['path']}`, {human(q['bytes'])}B, test accuracy {100 * q['test_accuracy']:.2f}%, "
                      f"{q['latency_ms_batch_64']:.2f} ms at batch 64."]
        lines.append("")
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
    written = ["model.pt", "policy.json", "report.md"] + (["model.onnx"] if "onnx" in report else []) + (
        ["model.int8.onnx"] if "int8" in report.get("onnx", {}) else [])
    print("wrote " + ", ".join(str(out_dir / w) for w in written), file=sys.stderr)
