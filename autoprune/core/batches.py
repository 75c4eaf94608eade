"""Mini-batches of one split, in memory or read per item: what the training and evaluation loops
consume. ``Split.batches`` yields ``(x, y)`` on the CPU; callers move them to their device."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from autoprune.errors import UserError, first_line

Batch = tuple[torch.Tensor, torch.Tensor]


class Split(Dataset):
    """Images and labels of one split. ``batches`` yields ``(x, y)`` on the CPU (pinned when
    asked); callers move them to their device."""

    labels: torch.Tensor  # int64, one per image, in order

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None, drop_last: bool = False,
                workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
        """One pass, shuffled when a generator is given."""
        raise NotImplementedError

    def take(self, idx: torch.Tensor) -> Batch:
        """The images at ``idx`` stacked into tensors (calibration and refit images)."""
        xs, ys = zip(*(self[int(i)] for i in idx), strict=True)
        return torch.stack([torch.as_tensor(x) for x in xs]), torch.tensor([int(y) for y in ys], dtype=torch.int64)

    def head(self, n: int) -> Split:
        """The first ``n`` images (a fixed, cheap subset for diagnostics)."""
        return self.subset(torch.arange(min(n, len(self))))

    def subset(self, idx: torch.Tensor) -> Split:
        raise NotImplementedError

    def digest(self) -> str:
        """A hash of what the split holds, for cache keys."""
        raise NotImplementedError


class TensorSplit(Split):
    """A split held in memory as one tensor of (normalised) images: batches are slices."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise UserError(f"{len(x)} images but {len(y)} labels")
        self.x, self.labels = x, y.long()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.labels[i])

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None, drop_last: bool = False,
                workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for start in range(0, n, batch_size):
            if drop_last and start + batch_size > n:
                return
            if order is None:
                xb, yb = self.x[start : start + batch_size], self.labels[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                xb, yb = self.x[idx], self.labels[idx]
            yield (xb.pin_memory(), yb.pin_memory()) if pin_memory else (xb, yb)

    def take(self, idx: torch.Tensor) -> Batch:
        return self.x[idx], self.labels[idx]

    def subset(self, idx: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.x[idx], self.labels[idx])

    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.x, self.labels):
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


class LazySplit(Split):
    """A split read per item from ``source`` (any dataset of ``(image, label)``), through
    ``transform`` (decode, resize, augment, normalise), at positions ``indices``."""

    def __init__(self, source: Dataset, indices: torch.Tensor, labels: torch.Tensor,
                 transform: Callable[[Any], torch.Tensor] | None = None, *, name: str = "dataset") -> None:
        self.source, self.indices, self.labels, self.transform, self.name = source, indices, labels.long(), transform, name

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        try:
            x, _ = self.source[j]
            x = self.transform(x) if self.transform is not None else torch.as_tensor(x)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user's file or dataset: say which item
            where = _item_path(self.source, j) or f"item {j} of {self.name}"
            raise UserError(f"cannot read {where}: {type(exc).__name__}: {first_line(exc)}") from exc
        return x, int(self.labels[i])

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None, drop_last: bool = False,
                workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
        loader = DataLoader(self, batch_size=batch_size, shuffle=generator is not None, generator=generator,
                            drop_last=drop_last, num_workers=workers, pin_memory=pin_memory,
                            persistent_workers=False)
        try:
            yield from loader
        except UserError as exc:  # raised in a worker: DataLoader wraps it in the worker's traceback
            last = str(exc).strip().splitlines()[-1]
            prefix = "autoprune.errors.UserError: "
            if last.startswith(prefix):
                raise UserError(last[len(prefix):]) from exc
            raise

    def subset(self, idx: torch.Tensor) -> LazySplit:
        return LazySplit(self.source, self.indices[idx], self.labels[idx], self.transform, name=self.name)

    def digest(self) -> str:
        """The positions, labels and a fixed sample of 32 items (reading every image would cost
        a pass over the dataset); the task's fingerprint covers the files themselves."""
        h = hashlib.sha256(self.name.encode())
        h.update(self.indices.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        for i in sorted({int(k) for k in torch.linspace(0, len(self) - 1, min(32, len(self))).long()}):
            h.update(self[i][0].contiguous().numpy().tobytes())
        return h.hexdigest()


def _item_path(source: Any, j: int) -> str | None:
    samples = getattr(source, "samples", None)
    if isinstance(samples, list) and 0 <= j < len(samples):
        return str(samples[j][0])
    return None


def endless_batches(data: Split, batch_size: int, generator: torch.Generator, *, workers: int = 0,
                    pin_memory: bool = False) -> Iterator[Batch]:
    """Shuffled mini-batches forever, dropping the ragged last batch of each pass (unless the
    split is smaller than one batch)."""
    while True:
        yield from data.batches(batch_size, generator=generator, drop_last=len(data) >= batch_size,
                                workers=workers, pin_memory=pin_memory)


class ToFloat:
    """An item as a float tensor: ``transform`` (decode, resize, augment) if any, uint8 scaled to
    [0, 1], then per-channel normalisation if given. Picklable (DataLoader workers need it)."""

    def __init__(self, transform: Callable[[Any], torch.Tensor] | None, mean: torch.Tensor | None,
                 std: torch.Tensor | None) -> None:
        self.transform, self.mean, self.std = transform, mean, std

    def __call__(self, item: Any) -> torch.Tensor:
        x = self.transform(item) if self.transform is not None else torch.as_tensor(item)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = x.float()
        return x if self.mean is None else (x - self.mean) / self.std
