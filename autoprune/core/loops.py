"""Training loops: dense baseline (cached), BatchNorm recalibration, short fine-tune,
evaluation. Nothing here knows about Optuna: a model goes in, a model or a number comes out."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.core.batches import Batch, Split, TensorSplit, endless_batches
from autoprune.core.device import autocast, grad_scaler, seeded


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives (its first parameter or buffer; the CPU for an empty model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _on(batch: Batch, device: torch.device) -> Batch:
    x, y = batch
    if x.device == device:
        return x, y
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, *, batch_size: int | None = None, amp: str = "off",
             workers: int = 0) -> float:
    """Top-1 accuracy in [0, 1] on ``data``, in eval mode, on the model's device. Batches of
    1,000 for data in memory (small images), 64 for data read per batch (photos at full
    resolution: a batch of 1,000 at 224 px holds gigabytes of activations)."""
    if batch_size is None:
        batch_size = 1000 if isinstance(data, TensorSplit) else 64
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = 0
    with autocast(device, amp):
        for batch in data.batches(batch_size, workers=workers, pin_memory=device.type == "cuda"):
            xb, yb = _on(batch, device)
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    model.train(was_training)
    return correct / max(1, len(data))


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, data: Split, *, num_batches: int = 20, batch_size: int = 128, seed: int = 0,
    workers: int = 0,
) -> None:
    """Re-estimate BatchNorm running statistics of a pruned network on training images.

    Pruning removes channels that fed later layers, so the stored running mean/var no longer
    match the activations; a cumulative average over ``num_batches`` batches replaces them."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    modes = {m: m.training for m in model.modules()}
    model.eval()  # dropout stays off (no noise in the statistics, no draw on the global RNG) ...
    for m in bns:
        m.train()  # ... and only BatchNorm layers update their running statistics
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[: num_batches * batch_size]
    for batch in data.subset(idx).batches(batch_size, workers=workers, pin_memory=device.type == "cuda"):
        model(_on(batch, device)[0])
    for m, momentum in saved:
        m.momentum = momentum
    for m, training in modes.items():
        m.training = training


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    weight: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """Hinton et al.: (1 - w) * CE + w * T^2 * KL(teacher || student) at temperature T."""
    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - weight) * ce + weight * temperature**2 * kl


def finetune(
    model: nn.Module,
    data: Split,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    seed: int = 0,
    teacher: nn.Module | None = None,
    progress: bool = False,
    desc: str = "fine-tune",
    check: tuple[int, Callable[[], bool]] | None = None,
    amp: str = "off",
    workers: int = 0,
) -> float:
    """SGD (momentum 0.9, nesterov) with cosine decay over ``steps`` mini-batches of ``data``,
    on the model's device (the teacher must live there too); with a ``teacher``, the loss is
    distilled from its logits; ``amp`` autocasts on CUDA (bf16, or fp16 with loss scaling).
    Returns the mean loss of the last 10%.

    ``check=(k, fn)`` calls ``fn()`` after step ``k``; if it returns False, training stops
    there (early stopping of a hopeless trial) and NaN is returned."""
    if steps <= 0:
        return float("nan")
    with seeded(seed):  # dropout masks; the caller's global random state is restored afterwards
        return _finetune(model, data, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         seed=seed, teacher=teacher, progress=progress, desc=desc, check=check, amp=amp,
                         workers=workers)


def _finetune(
    model: nn.Module,
    data: Split,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    teacher: nn.Module | None,
    progress: bool,
    desc: str,
    check: tuple[int, Callable[[], bool]] | None,
    amp: str,
    workers: int,
) -> float:
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    scaler = grad_scaler(device, amp)
    if teacher is not None:
        teacher.eval()
    model.train()
    stream = endless_batches(data, batch_size, gen, workers=workers, pin_memory=device.type == "cuda")
    tail: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    try:
        for step in range(steps):
            xb, yb = _on(next(stream), device)
            with autocast(device, amp):
                logits = model(xb)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(xb)
                    loss = distillation_loss(logits.float(), t_logits.float(), yb)
                else:
                    loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            sched.step()
            if step >= steps - max(1, steps // 10):
                tail.append(loss.item())
            if bar is not None:
                bar.update()
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            if check is not None and step + 1 == check[0] and not check[1]():  # evaluate() restores train mode
                return float("nan")
    finally:
        if bar is not None:
            bar.close()
        stream.close()  # stops DataLoader workers
    return sum(tail) / len(tail)


def recover_model(
    model: nn.Module,
    data: Split,
    *,
    steps: int,
    seed: int = 0,
    bn_batches: int = 20,
    batch_size: int = 128,
    lr: float = 0.01,
    teacher: nn.Module | None = None,
    progress: bool = False,
    desc: str = "fine-tune",
    bn_data: Split | None = None,
    amp: str = "off",
    workers: int = 0,
) -> nn.Module:
    """The recovery of a freshly pruned model, in place: BatchNorm statistics re-estimated on
    ``bn_batches`` training batches (of ``bn_data``, the train split without augmentation, if
    given), then ``steps`` fine-tune mini-batches (distilled from ``teacher`` if given).
    ``apply``, ``confirm`` and the benchmarks all recover this way."""
    recalibrate_bn(model, bn_data if bn_data is not None else data, num_batches=bn_batches, batch_size=batch_size,
                   seed=seed, workers=workers)
    finetune(model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, teacher=teacher,
             progress=progress, desc=desc, amp=amp, workers=workers)
    return model


# --------------------------------------------------------------------------- dense baseline
def train_dense(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    amp: str = "off",
    workers: int = 0,
) -> None:
    """Train from scratch: ``epochs`` passes, SGD with cosine decay (same loop as fine-tune)."""
    steps = epochs * max(1, len(data) // batch_size)
    finetune(
        model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        progress=progress, desc=f"dense baseline ({epochs} epochs)", amp=amp, workers=workers,
    )


