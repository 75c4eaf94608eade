"""Datasets and the train / search-val / test splits, in memory or read per batch.

Small built-in datasets (Fashion-MNIST, CIFAR-10, digits) are decoded once into normalised
tensors: the trial loop indexes them directly (the fast path). ImageFolder photos and user
datasets are read per batch through torch DataLoaders (worker processes, pinned memory on
CUDA) at their real resolution, with train augmentation, so a dataset larger than RAM works.

Trials are scored on ``val`` (a deterministic slice of the training set); ``test`` is used
only by ``apply`` and final reports.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from autoprune.errors import UserError
from autoprune.models import call_with_accepted, load_object
from autoprune.registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- splits
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
            raise UserError(f"cannot read {where}: {type(exc).__name__}: {_first(exc)}") from exc
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


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


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


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class RawData:
    """An in-memory dataset: images as ``[N, C, H, W]`` tensors (uint8 or float), int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass(frozen=True)
class LazyData:
    """A dataset read per item: ``(image, label)`` datasets, their labels (read without
    decoding any image), how to turn an item into a tensor for training and for evaluation,
    and a cheap fingerprint of the content."""

    train: Dataset
    test: Dataset
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    fingerprint: str
    train_transform: Callable[[Any], torch.Tensor] | None = None
    eval_transform: Callable[[Any], torch.Tensor] | None = None
    normalize: bool = True  # per-channel statistics of a sample of train images are applied


DatasetLoader = Callable[..., RawData | LazyData]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def dataset_dirs() -> list[Path]:
    """System folders searched after ``--data-root`` (``AUTOPRUNE_DATASET_DIRS``, ':'-separated)."""
    value = os.environ.get("AUTOPRUNE_DATASET_DIRS", "/usr/share/datasets")
    return [Path(p) for p in value.split(":") if p]


# --------------------------------------------------------------------------- Fashion-MNIST
_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Decode an idx file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read {path}: {type(exc).__name__}: {_first(exc)} (a corrupt or truncated file?)") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(dims))} values, got {array.size}")
    return array.reshape(dims)


def _find_idx_folder(candidates: Sequence[Path]) -> Path | None:
    for folder in candidates:
        if all(
            (folder / name).exists() or (folder / f"{name}.gz").exists()
            for name in _FMNIST_FILES.values()
        ):
            return folder
    return None


def _idx_file(folder: Path, name: str) -> Path:
    return folder / name if (folder / name).exists() else folder / f"{name}.gz"


@DATASETS.register("fashion-mnist")
def fashion_mnist(*, root: Path | None, download: bool, **_: object) -> RawData:
    """Fashion-MNIST from ``root`` (torchvision's layout or flat, gz or raw), then Debian's
    ``dataset-fashion-mnist`` under /usr/share/datasets, then torchvision's download."""
    candidates: list[Path] = []
    if root is not None:
        candidates += [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    candidates += [d / "fashion-mnist" for d in dataset_dirs()]
    folder = _find_idx_folder(candidates)
    if folder is None and download:
        target = root or Path.home() / ".cache" / "autoprune" / "data"
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(target), train=False, download=True)
        except Exception:  # noqa: BLE001 - no network, or the mirror is down: explained below
            pass
        folder = _find_idx_folder([target / "FashionMNIST" / "raw"])
    if folder is None:
        searched = ", ".join(str(c) for c in candidates)
        raise UserError(
            f"Fashion-MNIST not found (looked in {searched}"
            f"{'' if download else '; download disabled'}). Get it with "
            "'apt-get install dataset-fashion-mnist' (Debian) or put the four idx files "
            "from https://github.com/zalandoresearch/fashion-mnist in --data-root."
        )
    arrays = {key: read_idx(_idx_file(folder, name)) for key, name in _FMNIST_FILES.items()}
    return RawData(
        train_x=torch.from_numpy(arrays["train_x"].copy()).unsqueeze(1),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=torch.from_numpy(arrays["test_x"].copy()).unsqueeze(1),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
    )


# --------------------------------------------------------------------------- CIFAR-10
class _Refused(pickle.UnpicklingError):
    """A dataset pickle asked for something other than numpy arrays."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles of numpy arrays: allow those globals, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"refusing to load {module}.{name} from a dataset file")


def _cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"])
    except _Refused as exc:
        raise UserError(f"{path}: {_first(exc)} (only numpy arrays are read from CIFAR-10 files)") from exc
    except Exception as exc:  # noqa: BLE001 - truncated pickle, wrong keys, wrong types
        raise UserError(f"cannot read CIFAR-10 batch {path}: {type(exc).__name__}: {_first(exc)}") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise UserError(f"CIFAR-10 batch {path} holds data of shape {data.shape}, expected (N, 3072)")
    return data, labels


def _cifar_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise UserError(f"CIFAR-10 batch {path} is {raw.size} bytes, not a multiple of 3073 (a truncated file?)")
    records = raw.reshape(-1, 3073)
    return records[:, 1:], records[:, 0]


@DATASETS.register("cifar10")
def cifar10(*, root: Path | None, **_: object) -> RawData:
    """CIFAR-10 from a local ``root`` holding ``cifar-10-batches-bin`` (binary version) or
    ``cifar-10-batches-py`` (python version, read with a numpy-only unpickler)."""
    folders = [] if root is None else [root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"]
    for folder in folders:
        if (folder / "data_batch_1.bin").exists():
            reader, train_names, test_name = _cifar_binary_batch, [f"data_batch_{i}.bin" for i in range(1, 6)], "test_batch.bin"
            break
        if (folder / "data_batch_1").exists():
            reader, train_names, test_name = _cifar_python_batch, [f"data_batch_{i}" for i in range(1, 6)], "test_batch"
            break
    else:
        where = f"under --data-root {root}" if root is not None else "(no --data-root given)"
        raise UserError(
            f"CIFAR-10 not found {where}: pass --data-root with cifar-10-batches-bin/ or "
            "cifar-10-batches-py/ from https://www.cs.toronto.edu/~kriz/cifar.html"
        )
    missing = [n for n in [*train_names, test_name] if not (folder / n).exists()]
    if missing:
        raise UserError(f"CIFAR-10 in {folder} is incomplete: {', '.join(missing)} missing")
    parts = [reader(folder / n) for n in train_names]
    test = reader(folder / test_name)

    def images(flat: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(flat.reshape(-1, 3, 32, 32).copy())

    return RawData(
        train_x=images(np.concatenate([p[0] for p in parts])),
        train_y=torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64)),
        test_x=images(test[0]),
        test_y=torch.from_numpy(test[1].astype(np.int64)),
    )


# --------------------------------------------------------------------------- ImageFolder
def _rgb(path: str) -> Any:
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


@DATASETS.register("imagefolder")
def imagefolder(*, root: Path | None, image_size: int | None = None, augment: bool = True, **_: object) -> LazyData:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``), read per batch:
    train images through a random-resized crop and a horizontal flip (``augment``), evaluated
    images resized and centre-cropped, both to ``image_size`` (default 224) pixels."""
    if root is None:
        raise UserError("dataset 'imagefolder' needs --data-root with train/ and test/ (or val/) subfolders")
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        raise UserError(f"--data-root {root} must hold train/ and test/ (or val/) class folders")
    from torchvision import datasets, transforms

    try:
        train = datasets.ImageFolder(str(root / "train"), loader=_rgb)
        test = datasets.ImageFolder(str(test_dir), loader=_rgb)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"cannot read the image folders under {root}: {_first(exc)}") from exc
    if train.classes != test.classes:
        raise UserError(f"train classes {train.classes} differ from test classes {test_dir.name} {test.classes} in {root}")
    size = image_size or 224
    to_tensor = transforms.ToTensor()
    if augment:
        train_tf = transforms.Compose([transforms.RandomResizedCrop(size, antialias=True),
                                       transforms.RandomHorizontalFlip(), to_tensor])
    else:
        train_tf = None
    eval_tf = transforms.Compose([transforms.Resize(int(round(size / 0.875)), antialias=True),
                                  transforms.CenterCrop(size), to_tensor])
    h = hashlib.sha256(b"imagefolder")
    for split in (train, test):  # names, sizes and modification times: cheap, and any edit changes them
        for path, label in split.samples:
            st = os.stat(path)
            h.update(f"{os.path.relpath(path, root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return LazyData(train=train, test=test, train_labels=torch.tensor(train.targets),
                    test_labels=torch.tensor(test.targets), fingerprint=h.hexdigest()[:16],
                    train_transform=train_tf or eval_tf, eval_transform=eval_tf)


# --------------------------------------------------------------------------- digits (tiny)
@DATASETS.register("digits")
def digits(**_: object) -> RawData:
    """scikit-learn's bundled 8x8 digits (1,797 images): the tiny task for fast tests.
    A fixed 20% (360 images) is the test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = perm[:360], perm[360:]
    return RawData(x[train], y[train], x[test], y[test])


# --------------------------------------------------------------------------- user datasets
def labels_of(dataset: Any, name: str) -> torch.Tensor:
    """Every label of a user dataset, from ``targets`` if it has them, else item by item."""
    targets = getattr(dataset, "targets", None)
    try:
        if targets is not None and len(targets) == len(dataset):
            return torch.as_tensor([int(t) for t in targets], dtype=torch.int64)
        return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's dataset
        raise UserError(f"cannot read the labels of {name}: {type(exc).__name__}: {_first(exc)} "
                        "(items must be (image, integer label) pairs)") from exc


def user_dataset(train: Any, test: Any, *, name: str) -> LazyData:
    """Datasets of ``(image tensor, label)`` pairs from a user's factory or the Python API,
    read per item. The fingerprint hashes the sizes, every label and a fixed sample of items."""
    for split, which in ((train, "train"), (test, "test")):
        if not hasattr(split, "__len__") or not hasattr(split, "__getitem__"):
            raise UserError(f"{name}: the {which} dataset is a {type(split).__name__}, not a dataset of (image, label) "
                            "pairs (it needs __len__ and __getitem__)")
        if len(split) == 0:
            raise UserError(f"{name}: the {which} dataset is empty")
    train_labels, test_labels = labels_of(train, f"{name} (train)"), labels_of(test, f"{name} (test)")
    h = hashlib.sha256(name.encode())
    for split, labels in ((train, train_labels), (test, test_labels)):
        h.update(labels.numpy().tobytes())
        n = len(split)
        for i in sorted({0, n - 1, *range(0, n, max(1, n // 64))}):
            h.update(torch.as_tensor(split[i][0]).float().contiguous().numpy().tobytes())
    return LazyData(train=train, test=test, train_labels=train_labels, test_labels=test_labels,
                    fingerprint=h.hexdigest()[:16])


# --------------------------------------------------------------------------- entry point
def dataset_names() -> list[str]:
    return DATASETS.names()


def load_raw(name: str, *, root: Path | None = None, download: bool = True, image_size: int | None = None,
             augment: bool = True) -> RawData | LazyData:
    if ":" in name:
        factory = load_object(name, "dataset")
        try:
            result = call_with_accepted(factory, root=root)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's factory
            raise UserError(f"dataset factory {name!r} raised {type(exc).__name__}: {_first(exc)}") from exc
        if not (isinstance(result, tuple) and len(result) == 2):
            raise UserError(f"dataset factory {name!r} must return (train_dataset, test_dataset), "
                            f"got {type(result).__name__}")
        return user_dataset(result[0], result[1], name=name)
    loader = DATASETS.get(name)
    if root is not None and not root.exists():
        raise UserError(f"--data-root {root} does not exist")
    return loader(root=root, download=download, image_size=image_size, augment=augment)


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
