"""Where images come from: the built-in datasets (Fashion-MNIST, CIFAR-10, ImageFolder, digits)
and a user's ``package.module:factory``, registered by name. Small built-ins are decoded once
into tensors (``RawData``); image folders and user datasets are read per item (``LazyData``)."""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from autoprune.errors import UserError, first_line
from autoprune.registry import Registry
from autoprune.task.models import call_with_accepted, load_object


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
        raise UserError(f"cannot read {path}: {type(exc).__name__}: {first_line(exc)} (a corrupt or truncated file?)") from exc
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
        raise UserError(f"{path}: {first_line(exc)} (only numpy arrays are read from CIFAR-10 files)") from exc
    except Exception as exc:  # noqa: BLE001 - truncated pickle, wrong keys, wrong types
        raise UserError(f"cannot read CIFAR-10 batch {path}: {type(exc).__name__}: {first_line(exc)}") from exc
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
        raise UserError(f"cannot read the image folders under {root}: {first_line(exc)}") from exc
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
        raise UserError(f"cannot read the labels of {name}: {type(exc).__name__}: {first_line(exc)} "
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
            raise UserError(f"dataset factory {name!r} raised {type(exc).__name__}: {first_line(exc)}") from exc
        if not (isinstance(result, tuple) and len(result) == 2):
            raise UserError(f"dataset factory {name!r} must return (train_dataset, test_dataset), "
                            f"got {type(result).__name__}")
        return user_dataset(result[0], result[1], name=name)
    loader = DATASETS.get(name)
    if root is not None and not root.exists():
        raise UserError(f"--data-root {root} does not exist")
    return loader(root=root, download=download, image_size=image_size, augment=augment)
