"""The dense model a search starts from: a user checkpoint, or one trained by autoprune and
cached under a key of everything that determines it (model, data, split, seed, epochs)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from autoprune.core.checkpoints import (
    checkpoint_key,
    file_sha256,
    load_weights,
    save_state,
)
from autoprune.core.device import Runtime, seeded
from autoprune.core.loops import evaluate, train_dense
from autoprune.task.config import SearchConfig
from autoprune.task.models import build_model
from autoprune.task.splits import Task


@dataclass(frozen=True)
class Dense:
    model: nn.Module
    checkpoint: Path
    sha256: str
    trained: bool  # False when loaded from cache or a user checkpoint


def skeleton(config: SearchConfig, task: Task) -> nn.Module:
    """A freshly initialised model for ``task`` (deterministic in ``config.seed``)."""
    c, h, _ = task.input_shape
    with seeded(config.seed):
        return build_model(config.model, num_classes=task.num_classes, in_channels=c, input_size=h)


def dense_checkpoint_path(config: SearchConfig, task: Task) -> Path:
    key = checkpoint_key(
        model=config.model, data=task.fingerprint(), seed=config.seed, epochs=config.dense_epochs,
        lr=config.dense_lr, batch_size=config.batch_size, input=list(task.input_shape),
        augment=config.augment if task.lazy else None,
    )
    safe = config.model.replace(":", "_").replace("/", "_")
    return Path(config.cache_dir) / f"{task.dataset.replace(':', '_')}-{safe}-{key}.pt"


def get_dense(config: SearchConfig, task: Task, *, progress: bool = True, runtime: Runtime | None = None,
              path: Path | None = None) -> Dense:
    """Load ``path`` (a study's checkpoint fetched for a worker), else the user checkpoint,
    else the cached baseline, else train one (on the runtime's device) and cache it. The
    model returned lives on the CPU."""
    model = skeleton(config, task)
    if path is not None or config.checkpoint:
        path = Path(path or config.checkpoint).expanduser()
        load_weights(model, path)
        return Dense(model.eval(), path, file_sha256(path), trained=False)
    path = dense_checkpoint_path(config, task)
    if path.exists():
        load_weights(model, path)
        return Dense(model.eval(), path, file_sha256(path), trained=False)
    runtime = runtime or Runtime()
    if progress:
        print(f"training the dense {config.model} on {task.dataset} for {config.dense_epochs} epochs on "
              f"{runtime.device} (cached at {path} for later runs)", file=sys.stderr)
    model.to(runtime.device)
    train_dense(
        model, task.train, epochs=config.dense_epochs, batch_size=config.batch_size,
        lr=config.dense_lr, seed=config.seed, progress=progress, amp=runtime.amp, workers=runtime.workers,
    )
    model.eval()
    accuracy = evaluate(model, task.val, amp=runtime.amp, workers=runtime.workers)
    model.cpu()
    save_state(model, path, arch=config.model, dataset=task.dataset, seed=config.seed,
               epochs=config.dense_epochs, val_accuracy=accuracy)
    return Dense(model, path, file_sha256(path), trained=True)
