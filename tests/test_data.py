"""Dataset loading on data the tests make (and Debian's Fashion-MNIST when installed)."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.errors import UserError
from autoprune.task.sources import load_raw, read_idx
from autoprune.task.splits import load_task, make_task

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def fake_fmnist(folder: Path, gz: bool, n_train: int = 40, n_test: int = 10) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(n_train) % 10, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, gz)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_torchvision_layout(tmp_path, monkeypatch, gz):
    monkeypatch.setenv("AUTOPRUNE_DATASET_DIRS", "")
    fake_fmnist(tmp_path / "FashionMNIST" / "raw", gz)
    raw = load_raw("fashion-mnist", root=tmp_path, download=False)
    assert raw.train_x.shape == (40, 1, 28, 28) and raw.train_x.dtype == torch.uint8
    assert raw.test_y.tolist() == list(range(10))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_DATASET_DIRS", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_raw("fashion-mnist", root=tmp_path, download=False)


def test_truncated_idx_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 2, 2)), gz=False)
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "x")


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_the_real_thing():
    task = load_task("fashion-mnist", download=False)  # search-val: 10% of 60,000, capped at 5,000
    assert task.val_size == 5000
    assert task.train.x.shape == (55000, 1, 28, 28)
    assert task.val.x.shape == (5000, 1, 28, 28)
    assert task.test.x.shape == (10000, 1, 28, 28)
    assert task.num_classes == 10
    assert abs(float(task.train.x.mean())) < 1e-3  # normalised with the train statistics


def test_cifar10_binary_and_python_versions(tmp_path):
    rng = np.random.default_rng(0)
    binary = tmp_path / "bin" / "cifar-10-batches-bin"
    python = tmp_path / "py" / "cifar-10-batches-py"
    binary.mkdir(parents=True)
    python.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = np.array([i % 10, 1, 2, 3], dtype=np.uint8)
        (binary / f"{name}.bin").write_bytes(np.concatenate([labels[:, None], images], axis=1).tobytes())
        with open(python / name, "wb") as f:
            pickle.dump({b"data": images, b"labels": labels.tolist()}, f)
    a = load_raw("cifar10", root=tmp_path / "bin")
    b = load_raw("cifar10", root=tmp_path / "py")
    assert a.train_x.shape == (20, 3, 32, 32) and a.test_x.shape == (4, 3, 32, 32)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)


def test_cifar10_refuses_a_pickle_with_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(UserError, match="data_batch_1: refusing to load builtins.print from a dataset file"):
        load_raw("cifar10", root=tmp_path)


def test_missing_cifar10(tmp_path):
    with pytest.raises(UserError, match="CIFAR-10 not found"):
        load_raw("cifar10", root=tmp_path)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 12), (i * 40, 100, 200 if cls == "dog" else 0)).save(tmp_path / split / cls / f"{i}.png")
    raw = load_raw("imagefolder", root=tmp_path, image_size=16)
    assert raw.train_labels.tolist() == [0, 0, 0, 1, 1, 1] and raw.test_labels.tolist() == [0, 0, 1, 1]
    task = load_task("imagefolder", root=tmp_path, image_size=16, val_size=2)
    assert task.lazy and task.input_shape == (3, 16, 16) and task.num_classes == 2
    assert (len(task.train), len(task.val), len(task.test)) == (4, 2, 4)
    x, y = next(task.test.batches(4))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1]


def test_split_is_deterministic_disjoint_and_complete():
    from autoprune.task.sources import RawData

    # labels are image ids here, so the split can be read off the labels
    x = torch.arange(100, dtype=torch.float32).view(100, 1, 1, 1)
    raw = RawData(x, torch.arange(100), x[:10], torch.arange(10))
    a = make_task(raw, dataset="ids", val_size=20)
    b = make_task(raw, dataset="ids", val_size=20)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.train.x, b.train.x)
    train_ids, val_ids = set(a.train.labels.tolist()), set(a.val.labels.tolist())
    assert len(val_ids) == 20 and not train_ids & val_ids and train_ids | val_ids == set(range(100))
    # images still match their labels after the split and normalisation
    assert torch.equal(a.val.x.flatten().argsort(), a.val.labels.argsort())
    c = make_task(raw, dataset="ids", val_size=20, split_seed=1)
    assert set(c.val.labels.tolist()) != val_ids


def test_digits_task():
    a = load_task("digits", val_size=300)
    assert a.train.x.shape == (1137, 1, 8, 8) and a.val.x.shape == (300, 1, 8, 8) and a.test.x.shape == (360, 1, 8, 8)
    assert a.fingerprint() == load_task("digits", val_size=300).fingerprint() != load_task("digits", val_size=200).fingerprint()


def test_val_size_is_checked():
    raw = load_raw("digits")
    with pytest.raises(UserError, match="--val-size 5000 must be between 1 and half"):
        make_task(raw, dataset="digits", val_size=5000)


def test_unknown_dataset_lists_choices():
    with pytest.raises(UserError, match="unknown dataset 'mnist'; valid choices: cifar10, digits, fashion-mnist, imagefolder"):
        load_raw("mnist")


def test_dataset_factory(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "def make(root=None):\n"
        "    x = torch.rand(30, 3, 6, 6)\n"
        "    y = torch.arange(30) % 3\n"
        "    return list(zip(x, y)), list(zip(x[:6], y[:6]))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("mydata:make", val_size=10)
    assert task.input_shape == (3, 6, 6) and task.num_classes == 3 and len(task.val) == 10
    assert task.lazy and next(task.train.batches(4))[0].shape == (4, 3, 6, 6)
    with pytest.raises(UserError, match="cannot import module 'nosuch'"):
        load_task("nosuch:make")


def make_imagefolder(root: Path, n: int, size: int = 24) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", max(2, n // 4))):
        for k, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (size, size, 3)) + (120 if k else 0)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.jpg")


def test_imagefolder_is_read_per_batch_with_augmentation_and_workers(tmp_path):
    make_imagefolder(tmp_path, 12)
    task = load_task("imagefolder", root=tmp_path, image_size=16, val_size=4)
    assert task.lazy and task.input_shape == (3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    a = [x for x, _ in task.train.batches(4, generator=gen, workers=2)]
    b = [x for x, _ in task.train.batches(4, generator=torch.Generator().manual_seed(0), workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # seeded augmentation: reproducible
    plain = torch.cat([x for x, _ in task.plain_train.batches(20)])
    augmented = torch.cat([x for x, _ in task.train.batches(20)])
    assert plain.shape == augmented.shape == (20, 3, 16, 16) and not torch.equal(plain, augmented)
    assert abs(float(plain.mean())) < 0.5  # normalised with statistics of a train sample
    no_aug = load_task("imagefolder", root=tmp_path, image_size=16, val_size=4, augment=False)
    assert torch.equal(torch.cat([x for x, _ in no_aug.train.batches(20)]), plain)
    # the fingerprint follows the files: any edit changes it, and the dense baseline is not reused
    before = task.fingerprint()
    make_imagefolder(tmp_path / "other", 12)
    (tmp_path / "train" / "cat" / "0.jpg").write_bytes((tmp_path / "other" / "train" / "dog" / "0.jpg").read_bytes())
    assert load_task("imagefolder", root=tmp_path, image_size=16, val_size=4).fingerprint() != before


def test_in_memory_fingerprint_sees_every_value():
    from autoprune.task.sources import RawData

    x = torch.zeros(100, 1, 8, 8, dtype=torch.uint8)
    raw = RawData(x, torch.arange(100) % 10, x[:10], torch.arange(10))
    changed = x.clone()
    changed[57, 0, 3, 5] = 1  # one pixel of one image
    other = RawData(changed, torch.arange(100) % 10, x[:10], torch.arange(10))
    assert make_task(raw, dataset="d", val_size=10).fingerprint() != make_task(other, dataset="d", val_size=10).fingerprint()


def test_the_default_search_val_size_adapts_to_the_dataset():
    assert load_task("digits").val_size == 143  # 10% of 1,437 training images
    assert load_task("digits", val_size=300).val_size == 300
