"""A dataset split deterministically into train / search-val / test and normalised: the ``Task``
every command starts from. Trials are scored on ``val`` (a slice of the training set); ``test``
is read only by ``apply`` and final reports."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autoprune.core.batches import LazySplit, Split, TensorSplit, ToFloat
from autoprune.errors import UserError
from autoprune.task.sources import LazyData, RawData, load_raw


@dataclass(frozen=True)
class Task:
    """A dataset ready for the trial loop."""

    dataset: str
    num_classes: int
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, int, int]
    #: changes whenever the data or the split changes (part of the baseline cache key)
    data_fingerprint: str = ""
    #: a train split read without augmentation (BN recalibration, calibration images); the
    #: train split itself for in-memory data
    train_plain: Split | None = field(default=None, compare=False)

    @property
    def val_size(self) -> int:
        return len(self.val)

    @property
    def lazy(self) -> bool:
        return isinstance(self.train, LazySplit)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def fingerprint(self) -> str:
        return self.data_fingerprint

    @property
    def plain_train(self) -> Split:
        return self.train_plain if self.train_plain is not None else self.train


def default_val_size(n_train: int) -> int:
    """Search-val images held out of ``n_train``: 10% of them, at most 5,000, at least 1."""
    return max(1, min(5000, n_train // 10))


def _split_indices(n: int, val_size: int | None, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    val_size = default_val_size(n) if val_size is None else val_size
    if not 0 < val_size <= n // 2:
        raise UserError(f"--val-size {val_size} must be between 1 and half the training set ({n // 2} of {n} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[:val_size].sort().values, perm[val_size:].sort().values


def make_task(raw: RawData | LazyData, *, dataset: str, val_size: int | None, split_seed: int = 0,
              stats_images: int = 512) -> Task:
    """Split train deterministically into train / search-val, and normalise every split with
    the per-channel mean and std of the remaining train part (of a seeded sample of
    ``stats_images`` of it for data read per batch)."""
    if isinstance(raw, LazyData):
        return _lazy_task(raw, dataset=dataset, val_size=val_size, split_seed=split_seed, stats_images=stats_images)
    n = len(raw.train_y)
    val_idx, train_idx = _split_indices(n, val_size, split_seed)
    if raw.train_x.dim() != 4:
        raise UserError(f"dataset {dataset!r} images must be [N, C, H, W], got shape {tuple(raw.train_x.shape)}")

    def as_float(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    train_x = as_float(raw.train_x[train_idx])
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((as_float(x) - mean) / std).contiguous()

    h = hashlib.sha256(dataset.encode())  # every byte of the data, and the split
    for t in (raw.train_x, raw.train_y, raw.test_x, raw.test_y, val_idx):
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.contiguous().numpy().tobytes())
    labels = torch.cat([raw.train_y, raw.test_y])
    c, hh, ww = raw.train_x.shape[1:]
    return Task(
        dataset=dataset,
        num_classes=int(labels.max()) + 1,
        train=TensorSplit((train_x - mean) / std, raw.train_y[train_idx].contiguous()),
        val=TensorSplit(norm(raw.train_x[val_idx]), raw.train_y[val_idx].contiguous()),
        test=TensorSplit(norm(raw.test_x), raw.test_y.contiguous()),
        input_shape=(int(c), int(hh), int(ww)),
        data_fingerprint=h.hexdigest()[:16],
    )


def _lazy_task(raw: LazyData, *, dataset: str, val_size: int | None, split_seed: int, stats_images: int) -> Task:
    n = len(raw.train_labels)
    val_idx, train_idx = _split_indices(n, val_size, split_seed)
    plain = LazySplit(raw.train, train_idx, raw.train_labels[train_idx], ToFloat(raw.eval_transform, None, None),
                      name=dataset)
    sample = torch.randperm(len(plain), generator=torch.Generator().manual_seed(split_seed))[:stats_images]
    x, _ = plain.take(sample)
    if x.dim() != 4:
        raise UserError(f"dataset {dataset!r} items must be [C, H, W] images, got shape {tuple(x.shape[1:])}")
    mean = std = None
    if raw.normalize:
        mean = x.mean(dim=(0, 2, 3)).view(-1, 1, 1)
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).view(-1, 1, 1)
    train_tf = ToFloat(raw.train_transform or raw.eval_transform, mean, std)
    eval_tf = ToFloat(raw.eval_transform, mean, std)
    labels = torch.cat([raw.train_labels, raw.test_labels])
    h = hashlib.sha256(f"{dataset}|{raw.fingerprint}".encode())
    h.update(val_idx.numpy().tobytes())
    c, hh, ww = x.shape[1:]
    return Task(
        dataset=dataset,
        num_classes=int(labels.max()) + 1,
        train=LazySplit(raw.train, train_idx, raw.train_labels[train_idx], train_tf, name=dataset),
        val=LazySplit(raw.train, val_idx, raw.train_labels[val_idx], eval_tf, name=dataset),
        test=LazySplit(raw.test, torch.arange(len(raw.test_labels)), raw.test_labels, eval_tf, name=dataset),
        input_shape=(int(c), int(hh), int(ww)),
        data_fingerprint=h.hexdigest()[:16],
        train_plain=LazySplit(raw.train, train_idx, raw.train_labels[train_idx], eval_tf, name=dataset),
    )


def load_task(
    name: str,
    *,
    root: Path | None = None,
    val_size: int | None = None,
    split_seed: int = 0,
    download: bool = True,
    image_size: int | None = None,
    augment: bool = True,
) -> Task:
    raw = load_raw(name, root=root, download=download, image_size=image_size, augment=augment)
    return make_task(raw, dataset=name, val_size=val_size, split_seed=split_seed)
