"""From a config to what every command starts from: the task's data splits, the seeded
calibration and refit images, and the pruner (which layers stay whole, channel rounding).

Nothing here knows Optuna: the search, ``apply``, ``confirm`` and the benchmarks share it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoprune.core.batches import Split
from autoprune.core.device import Runtime, resolve_device
from autoprune.core.groups import resolve_ignore
from autoprune.core.importance import Calibration
from autoprune.core.measure.latency import LatencyMeter
from autoprune.core.prune import Pruner
from autoprune.task.config import SearchConfig, data_root_path
from autoprune.task.splits import Task, load_task


def load_config_task(config: SearchConfig) -> Task:
    """The dataset ``config`` names, split into train / search-val / test. A ``val_size`` left
    to its default is resolved here and written into ``config`` (the study stores the number)."""
    task = load_task(
        config.dataset, root=data_root_path(config), val_size=config.val_size,
        split_seed=config.split_seed, download=config.download, image_size=config.image_size,
        augment=config.augment,
    )
    if config.val_size is None:
        config.val_size = task.val_size
    return task


def runtime_of(config: SearchConfig, task: Task | None = None) -> Runtime:
    """The device (``--device``, resolved on this machine), autocast and loader workers."""
    return Runtime(device=resolve_device(config.device), amp=config.amp,
                   workers=config.loader_workers if task is not None and task.lazy else 0)


def calibration_of(config: SearchConfig, train: Split) -> Calibration:
    """A seeded subset of training images (without augmentation) for Taylor / activation importance."""
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))[: config.calib_images]
    x, y = train.take(idx)
    return Calibration(x, y, batch_size=config.batch_size)


def reconstruction_images(config: SearchConfig, train: Split) -> torch.Tensor:
    """A seeded subset of training images the trials' layer refits are solved on."""
    gen = torch.Generator().manual_seed(config.seed + 1)
    return train.take(torch.randperm(len(train), generator=gen)[: config.reconstruct_images])[0]


def pruner_of(model: nn.Module, example_input: torch.Tensor, config: SearchConfig, *,
              calibration: Calibration | None = None) -> Pruner:
    """The pruner a config describes: which layers stay whole (``ignore``, the head, the stem
    unless ``prune_stem``), the channel rounding, and the seed of random importance."""
    return Pruner(model, example_input,
                  ignored=resolve_ignore(model, example_input, config.ignore, prune_stem=config.prune_stem),
                  calibration=calibration, seed=config.seed, round_to=config.round_to,
                  min_channels=config.min_channels)


def meter_of(config: SearchConfig, dense: nn.Module, example_input: torch.Tensor, device: torch.device | None = None
             ) -> LatencyMeter | None:
    """The meter a config asks for (None without ``budget_latency``)."""
    if not config.budget_latency:
        return None
    return LatencyMeter(dense, example_input, batch=config.latency_batch, runtime=config.latency_runtime,
                        device=device or "cpu", cache_dir=Path(config.cache_dir))
