"""Datasets decoded once into in-memory tensors, and the train / search-val / test splits.

Trials are scored on ``val`` (a deterministic slice of the training set); ``test`` is used
only by ``apply`` and final reports.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoprune.errors import UserError
from autoprune.models import call_with_accepted, load_object
from autoprune.registry import Registry


@dataclass(frozen=True)
class RawData:
    """Images as ``[N, C, H, W]`` tensors (uint8 or float) and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass(frozen=True)
class Task:
    """A dataset ready for the trial loop: normalised float tensors in memory."""

    dataset: str
    num_classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def fingerprint(self) -> str:
        """Changes whenever the data or the split changes (part of the baseline cache key)."""
        h = hashlib.sha256(self.dataset.encode())
        for t in (self.train_x, self.train_y, self.val_x, self.val_y):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.flatten()[:: max(1, t.numel() // 4096)].numpy().tobytes())
        return h.hexdigest()[:16]


DatasetLoader = Callable[..., RawData]
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
    with opener(path, "rb") as f:
        data = f.read()
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
        except Exception:  # no network, or the mirror is down: explained below
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
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    return np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"])


def _cifar_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
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
        raise UserError(
            f"CIFAR-10 not found under --data-root {root}: expected cifar-10-batches-bin/ or "
            "cifar-10-batches-py/ from https://www.cs.toronto.edu/~kriz/cifar.html"
        )
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
@DATASETS.register("imagefolder")
def imagefolder(*, root: Path | None, image_size: int = 32, **_: object) -> RawData:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``), decoded once to RGB
    tensors of ``image_size`` x ``image_size``."""
    if root is None:
        raise UserError("dataset 'imagefolder' needs --data-root with train/ and test/ (or val/) subfolders")
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        raise UserError(f"--data-root {root} must hold train/ and test/ (or val/) class folders")
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [transforms.Resize((image_size, image_size)), transforms.PILToTensor()]
    )
    train = datasets.ImageFolder(str(root / "train"), transform=tf)
    test = datasets.ImageFolder(str(test_dir), transform=tf)
    if train.classes != test.classes:
        raise UserError(f"train classes {train.classes} differ from test classes {test.classes} in {root}")
    return RawData(*_stack(train), *_stack(test))


def _stack(dataset: object) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in dataset:  # type: ignore[attr-defined]
        xs.append(torch.as_tensor(x))
        ys.append(int(y))
    if not xs:
        raise UserError("a dataset split is empty")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


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


# --------------------------------------------------------------------------- entry point
def dataset_names() -> list[str]:
    return DATASETS.names()


def load_raw(name: str, *, root: Path | None = None, download: bool = True, image_size: int = 32) -> RawData:
    if ":" in name:
        result = call_with_accepted(load_object(name, "dataset"), root=root)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise UserError(f"dataset factory {name!r} must return (train_dataset, test_dataset)")
        return RawData(*_stack(result[0]), *_stack(result[1]))
    loader = DATASETS.get(name)
    if root is not None and not root.exists():
        raise UserError(f"--data-root {root} does not exist")
    return loader(root=root, download=download, image_size=image_size)


def make_task(raw: RawData, *, dataset: str, val_size: int, split_seed: int = 0) -> Task:
    """Split train deterministically into train / search-val, and normalise every split with
    the per-channel mean and std of the remaining train part."""
    n = len(raw.train_y)
    if not 0 < val_size <= n // 2:
        raise UserError(f"val size {val_size} must be between 1 and half the training set ({n // 2})")
    if raw.train_x.dim() != 4:
        raise UserError(f"dataset {dataset!r} images must be [N, C, H, W], got shape {tuple(raw.train_x.shape)}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values

    def as_float(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    train_x = as_float(raw.train_x[train_idx])
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((as_float(x) - mean) / std).contiguous()

    labels = torch.cat([raw.train_y, raw.test_y])
    return Task(
        dataset=dataset,
        num_classes=int(labels.max()) + 1,
        train_x=(train_x - mean) / std,
        train_y=raw.train_y[train_idx].contiguous(),
        val_x=norm(raw.train_x[val_idx]),
        val_y=raw.train_y[val_idx].contiguous(),
        test_x=norm(raw.test_x),
        test_y=raw.test_y.contiguous(),
    )


def load_task(
    name: str,
    *,
    root: Path | None = None,
    val_size: int = 5000,
    split_seed: int = 0,
    download: bool = True,
    image_size: int = 32,
) -> Task:
    raw = load_raw(name, root=root, download=download, image_size=image_size)
    return make_task(raw, dataset=name, val_size=val_size, split_seed=split_seed)
