#!/usr/bin/env python3
"""Device check: a short search and apply on CUDA, checked against the CPU.

On a machine with a GPU (``bash scripts/gpu_check.sh``), with ResNet-20 on a synthetic
CIFAR-shaped task held in memory (no dataset files needed):

1. every fine-tune, BN recalibration and evaluation of a ``--device cuda`` search runs with
   the model and the batches on CUDA (counted through hooks, not assumed);
2. the same search on the CPU gives the same policies and FLOPs, and accuracies within
   ``--tolerance`` (cuDNN kernels differ from the CPU's in the last bits);
3. the best policy recovered on CUDA and exported loads on the CPU and gives the same logits;
4. trials per minute on CUDA against the CPU (``--cpu-trials`` fewer, it is slower).

    python scripts/gpu_check.py --out results/gpu_check.json
    python scripts/gpu_check.py --device cpu        # the same checks against the CPU itself (no GPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic_task(n_train: int, n_val: int, seed: int = 0):
    """CIFAR-shaped images whose class sets a colour and a stripe pattern: learnable in a few
    hundred steps, so accuracies mean something."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    y = torch.randint(0, 10, (n,), generator=gen)
    xx = torch.arange(32).float().view(1, 1, 32)
    stripes = torch.sin(xx * (1 + y.float().view(-1, 1, 1)) / 3).unsqueeze(1)  # [n, 1, 1, 32]
    colour = torch.stack([(y % 3).float(), (y % 5).float() / 2, (y % 2).float()], dim=1).view(n, 3, 1, 1)
    x = stripes.expand(n, 3, 32, 32) + colour + 0.8 * torch.randn(n, 3, 32, 32, generator=gen)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="the device to check against the CPU (default cuda)")
    p.add_argument("--trials", type=int, default=4, help="trials of each search on the device")
    p.add_argument("--cpu-trials", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--tolerance", type=float, default=0.03, help="largest accuracy difference device vs CPU")
    p.add_argument("--out", default=str(ROOT / "results" / "gpu_check.json"))
    args = p.parse_args(argv)

    import optuna
    import torch

    import autoprune
    from autoprune.core import loops as train_module
    from autoprune.core.batches import TensorSplit
    from autoprune.core.loops import model_device, recover_model, train_dense
    from autoprune.task.models import build_model

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine", file=sys.stderr)
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (xt, yt), (xv, yv) = synthetic_task(6000, 1000)
    example = xt[:1]
    torch.manual_seed(0)
    dense = build_model("resnet20", num_classes=10, in_channels=3, input_size=32)
    train_dense(dense.to(device), TensorSplit(xt, yt), epochs=2, batch_size=128, progress=False)
    dense.cpu().eval()
    report: dict = {"device": str(device), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}

    # 1. where the work happens: every batch moved and every model trained or scored
    seen: dict[str, set[str]] = {"batches": set(), "models": set()}
    real_on, real_finetune, real_evaluate = train_module._on, train_module.finetune, train_module.evaluate

    def on(batch, dev):
        moved = real_on(batch, dev)
        seen["batches"].add(str(moved[0].device.type))
        return moved

    def finetune(model, *a, **k):
        seen["models"].add(model_device(model).type)
        return real_finetune(model, *a, **k)

    def evaluate(model, *a, **k):
        seen["models"].add(model_device(model).type)
        return real_evaluate(model, *a, **k)

    work = Path(tempfile.mkdtemp(prefix="autoprune-gpu-check-"))

    def search(on_device: str, trials: int, label: str) -> tuple[optuna.Study, float]:
        t0 = time.perf_counter()
        study = autoprune.search(dense, (xt, yt), (xv, yv), example, budget_flops=0.4, storage=f"sqlite:///{work}/s.db",
                                 study=f"check-{label}", trials=trials, finetune_steps=args.steps, progress=False,
                                 device=on_device, sampler="random", methods=["l1"], seed=0, references=False)
        return study, time.perf_counter() - t0

    train_module._on, train_module.finetune, train_module.evaluate = on, finetune, evaluate
    import autoprune.policy_search.objective as objective_module

    objective_module.finetune, objective_module.evaluate = finetune, evaluate
    try:
        gpu_study, gpu_seconds = search(args.device, args.trials, "device")
    finally:
        train_module._on, train_module.finetune, train_module.evaluate = real_on, real_finetune, real_evaluate
        objective_module.finetune, objective_module.evaluate = real_finetune, real_evaluate
    report["seen"] = {k: sorted(v) for k, v in seen.items()}
    assert seen["batches"] == {device.type} and seen["models"] == {device.type}, seen

    # 2. the CPU gives the same policies and FLOPs, accuracies within the tolerance
    cpu_study, cpu_seconds = search("cpu", args.cpu_trials, "cpu")
    pairs = list(zip(cpu_study.trials, gpu_study.trials, strict=False))
    diffs = []
    for c, g in pairs:
        assert c.params == g.params, "the two searches sampled different policies"
        assert c.user_attrs["flops"] == g.user_attrs["flops"] and c.user_attrs["channels"] == g.user_attrs["channels"]
        diffs.append(abs(c.values[0] - g.values[0]))
    report["accuracy"] = {"cpu": [t.values[0] for t, _ in pairs], "device": [t.values[0] for _, t in pairs],
                          "largest_difference": max(diffs)}
    assert max(diffs) <= args.tolerance, report["accuracy"]

    # 3. a model recovered on the device, exported, loads on the CPU with the same logits
    best = max(gpu_study.best_trials, key=lambda t: t.values[0])
    policy = autoprune.Policy.from_dict(best.user_attrs["policy"])
    model, _ = autoprune.apply_policy(dense, policy, example_input=example)
    recover_model(model.to(device), TensorSplit(xt, yt), steps=args.steps, seed=0)
    torch.save(model.cpu().state_dict(), work / "pruned.pt")
    again, _ = autoprune.apply_policy(dense, policy, example_input=example)
    again.load_state_dict(torch.load(work / "pruned.pt", weights_only=True))
    with torch.no_grad():
        on_cpu = again.eval()(xv[:64])
        on_dev = model.to(device).eval()(xv[:64].to(device)).cpu()
    report["export_max_logit_difference"] = float((on_cpu - on_dev).abs().max())
    assert report["export_max_logit_difference"] < 1e-2

    # 4. throughput
    dev_trials = len([t for t in gpu_study.trials if t.state.name == "COMPLETE"])
    cpu_trials = len([t for t in cpu_study.trials if t.state.name == "COMPLETE"])
    report["trials_per_minute"] = {"device": 60 * dev_trials / gpu_seconds, "cpu": 60 * cpu_trials / cpu_seconds,
                                   "cpu_threads": torch.get_num_threads()}
    report["seconds_per_trial"] = {
        "device": statistics.mean(t.user_attrs["seconds"]["total"] for t in gpu_study.trials),
        "cpu": statistics.mean(t.user_attrs["seconds"]["total"] for t in cpu_study.trials)}
    print(json.dumps(report, indent=1))
    print(f"gpu_check: OK on {device}: {report['trials_per_minute']['device']:.1f} trials/min against "
          f"{report['trials_per_minute']['cpu']:.1f} on the CPU ({torch.get_num_threads()} threads), ResNet-20, "
          f"{args.steps} steps per trial")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
