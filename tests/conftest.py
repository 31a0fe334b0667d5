"""Shared fixtures: Fashion-MNIST-format IDX files written by the tests, and the real data."""

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
# The rules call `fgbench`: make the venv's scripts reachable from subprocesses.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
# `make test` runs two pytest-xdist workers on CI's 2 cores: each worker, and the jobs it starts,
# gets one thread (two workers of two threads each would oversubscribe the cores).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 data: magic 0x0000 08 <ndim>, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def synthetic_fashion(n_per_class: int, seed: int):
    """Images whose class is visible (a class-specific bright bar plus noise), labels 0-9."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 * c + 4 : 2 * c + 7, 3:25] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_fashion(folder: Path, n_train: int = 30, n_test: int = 20, gz: bool = True) -> Path:
    """The four Fashion-MNIST IDX files with ``n_train`` / ``n_test`` images per class."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_fashion(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return folder


def class_batch(n: int = 16, classes: int = 4) -> dict:
    """A fixed training batch of 28x28 images whose class is visible (a bright row per class)."""
    import torch

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(n // classes)
    images = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    images[torch.arange(n), 0, labels * 6 + 2, :] += 0.7
    return {"images": images, "labels": labels, "index": torch.arange(n)}


def prepared_fashion(folder: Path, n_train: int, n_test: int) -> Path:
    """Synthetic Fashion-MNIST files in ``folder``, prepared (20% validation): the data.npz path."""
    from fgbench.data import prepare

    root = write_fashion(folder / "fashion", n_train=n_train, n_test=n_test)
    out = folder / "data.npz"
    prepare("fashion_mnist", {"root": str(root), "val_fraction": 0.2, "split_seed": 0, "verify": False}, out)
    return out


@pytest.fixture
def fashion_dir(tmp_path):
    return write_fashion(tmp_path / "fashion")


@pytest.fixture
def real_fashion():
    if not all((FASHION_DEBIAN / f).exists() for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST not on disk: `make setup` installs Debian's dataset-fashion-mnist")
    return FASHION_DEBIAN


@pytest.fixture
def one_thread():
    """torch on one thread for the test: a forked child (torchrun's workers, a killed and
    restarted run) must not touch OpenMP threads the parent started (libgomp hangs after a
    fork), and runs compared with each other then do the same single-threaded arithmetic."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """A test skipped without CUDA also carries the marker ``cuda``: benchmarks/gpu_check.sh runs
    them all with ``-m cuda``."""
    for item in items:
        if any("CUDA" in mark.kwargs.get("reason", "") for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)
