"""Training loops: dense baseline (cached), BatchNorm recalibration, short fine-tune,
evaluation. Nothing here knows about Optuna: a model goes in, a model or a number comes out."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.device import seeded
from autoprune.errors import UserError


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of in-memory tensors; shuffled when a generator is given."""
    n = len(y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def endless_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches forever, dropping the ragged last batch of each pass."""
    while True:
        for xb, yb in batches(x, y, batch_size, generator=generator):
            if len(yb) == batch_size or len(y) < batch_size:
                yield xb, yb


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1], in eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for xb, yb in batches(x, y, batch_size):
        correct += int((model(xb).argmax(dim=1) == yb).sum())
    model.train(was_training)
    return correct / max(1, len(y))


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, x: torch.Tensor, *, num_batches: int = 20, batch_size: int = 128, seed: int = 0
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
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen)[: num_batches * batch_size]
    for start in range(0, len(idx), batch_size):
        model(x[idx[start : start + batch_size]])
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
    x: torch.Tensor,
    y: torch.Tensor,
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
) -> float:
    """SGD (momentum 0.9, nesterov) with cosine decay over ``steps`` mini-batches; with a
    ``teacher``, the loss is distilled from its logits. Returns the mean loss of the last 10%.

    ``check=(k, fn)`` calls ``fn()`` after step ``k``; if it returns False, training stops
    there (early stopping of a hopeless trial) and NaN is returned."""
    if steps <= 0:
        return float("nan")
    with seeded(seed):  # dropout masks; the caller's global random state is restored afterwards
        return _finetune(model, x, y, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         seed=seed, teacher=teacher, progress=progress, desc=desc, check=check)


def _finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
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
) -> float:
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    if teacher is not None:
        teacher.eval()
    model.train()
    stream = endless_batches(x, y, batch_size, gen)
    tail: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    for step in range(steps):
        xb, yb = next(stream)
        logits = model(xb)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(xb)
            loss = distillation_loss(logits, t_logits, yb)
        else:
            loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
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
            if bar is not None:
                bar.close()
            return float("nan")
    if bar is not None:
        bar.close()
    return sum(tail) / len(tail)


def recover_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    seed: int = 0,
    bn_batches: int = 20,
    batch_size: int = 128,
    lr: float = 0.01,
    teacher: nn.Module | None = None,
    progress: bool = False,
    desc: str = "fine-tune",
) -> nn.Module:
    """The recovery of a freshly pruned model, in place: BatchNorm statistics re-estimated on
    ``bn_batches`` training batches, then ``steps`` fine-tune mini-batches (distilled from
    ``teacher`` if given). ``apply``, ``confirm`` and the benchmarks all recover this way."""
    recalibrate_bn(model, x, num_batches=bn_batches, batch_size=batch_size, seed=seed)
    finetune(model, x, y, steps=steps, batch_size=batch_size, lr=lr, seed=seed, teacher=teacher,
             progress=progress, desc=desc)
    return model


# --------------------------------------------------------------------------- dense baseline
def train_dense(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Train from scratch: ``epochs`` passes, SGD with cosine decay (same loop as fine-tune)."""
    steps = epochs * max(1, len(y) // batch_size)
    finetune(
        model, x, y, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        progress=progress, desc=f"dense baseline ({epochs} epochs)",
    )


def checkpoint_key(**fields: object) -> str:
    """A short stable hash of the fields that determine a dense checkpoint."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_state(model: nn.Module, path: Path, **meta: object) -> None:
    """Save a state dict (tensors only) and metadata; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.state_dict(), "meta": json.dumps(meta)}, tmp)
    tmp.replace(path)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True``: a plain state dict, or one under the
    key ``state_dict`` / ``model``. Anything else is a one-line :class:`UserError`."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code in it, wrong format
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load checkpoint {path}: {first}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} holds no state dict of tensors")
    return obj


def load_weights(model: nn.Module, path: Path) -> None:
    state = load_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:3])
        raise UserError(f"checkpoint {path} does not fit the model: {detail[:400]}") from None
