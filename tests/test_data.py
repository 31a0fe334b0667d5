"""Loaders on IDX fixtures, the hierarchy, the prepared splits, and bad data."""

import gzip
import hashlib
import pickle

import numpy as np
import pytest

from conftest import idx_bytes, synthetic_fashion, write_fashion, write_idx
from fgbench.data import (
    DATASETS, Split, cifar100, fashion_mnist, is_in_memory, load_prepared, prepare, split_defaults,
)
from fgbench.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from fgbench.errors import DataError

SPEC = {"val_fraction": 0.2, "split_seed": 0, "max_images_per_class": None,
        "verify": False}  # synthetic files: not the official md5s


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    images, labels = synthetic_fashion(3, seed=0)
    got_images = read_idx(write_idx(tmp_path / "img", images, gz), IMAGES_MAGIC)
    got_labels = read_idx(write_idx(tmp_path / "lab", labels, gz), LABELS_MAGIC)
    assert got_images.shape == (30, 28, 28) and got_images.dtype == np.uint8
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_truncated_idx_is_reported(tmp_path):
    images, _ = synthetic_fashion(2, seed=0)
    path = tmp_path / "img"
    path.write_bytes(idx_bytes(images)[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path, IMAGES_MAGIC)
    gz = tmp_path / "img.gz"
    gz.write_bytes(gzip.compress(idx_bytes(images))[:-50])
    with pytest.raises(DataError, match="img.gz"):
        read_idx(gz, IMAGES_MAGIC)


def test_wrong_magic_is_reported(tmp_path):
    _, labels = synthetic_fashion(2, seed=0)
    path = write_idx(tmp_path / "labels", labels)
    with pytest.raises(DataError, match="magic 0x00000801, expected 0x00000803"):
        read_idx(path, IMAGES_MAGIC)


def test_hierarchy_matches_design():
    expected = {
        "tops": ["T-shirt/top", "Pullover", "Coat", "Shirt"],
        "bottoms and dresses": ["Trouser", "Dress"],
        "footwear": ["Sandal", "Sneaker", "Ankle boot"],
        "bags": ["Bag"],
    }
    got = {
        coarse: [fashion_mnist.FINE_NAMES[f] for f in range(10) if fashion_mnist.FINE_TO_COARSE[f] == c]
        for c, coarse in enumerate(fashion_mnist.COARSE_NAMES)
    }
    assert got == expected


def test_prepare_splits(fashion_dir, tmp_path):
    out = tmp_path / "data.npz"
    prepare("fashion_mnist", {**SPEC, "root": str(fashion_dir)}, out)
    data = load_prepared(out)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    # Stratified: 20% of each class's 30 training images go to validation.
    assert np.bincount(val.fine).tolist() == [6] * 10
    assert np.bincount(train.fine).tolist() == [24] * 10
    assert sorted(np.concatenate([train.index, val.index]).tolist()) == list(range(300))
    assert len(test) == 200
    np.testing.assert_array_equal(train.coarse, fashion_mnist.FINE_TO_COARSE[train.fine])
    # Seeded: the same seed gives the same split, another seed another one.
    prepare("fashion_mnist", {**SPEC, "root": str(fashion_dir)}, tmp_path / "again.npz")
    np.testing.assert_array_equal(load_prepared(tmp_path / "again.npz").splits["val"].index, val.index)
    prepare("fashion_mnist", {**SPEC, "split_seed": 1, "root": str(fashion_dir)}, tmp_path / "other.npz")
    assert set(load_prepared(tmp_path / "other.npz").splits["val"].index) != set(val.index)


def test_prepare_caps_images_per_class(fashion_dir, tmp_path):
    caps = {"train": 5, "val": None, "test": 3}
    prepare("fashion_mnist", {**SPEC, "root": str(fashion_dir), "max_images_per_class": caps}, tmp_path / "d.npz")
    data = load_prepared(tmp_path / "d.npz")
    assert np.bincount(data.splits["train"].fine).tolist() == [5] * 10
    assert np.bincount(data.splits["test"].fine).tolist() == [3] * 10


def test_missing_files_under_configured_root(tmp_path):
    with pytest.raises(DataError, match=r"datasets.fashion_mnist.root = .*train-images-idx3-ubyte\[.gz\]"):
        fashion_mnist.locate(str(tmp_path))


def test_not_found_anywhere_names_every_path(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(DataError) as err:
        fashion_mnist.locate(None, download_dir=str(tmp_path / "dl"), allow_download=False)
    msg = str(err.value)
    assert "no-debian" in msg and "dl" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "datasets.fashion_mnist.root" in msg


def test_labels_out_of_range(tmp_path):
    folder = write_fashion(tmp_path / "f", n_train=2, n_test=2)
    _, labels = synthetic_fashion(2, seed=1)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels + 10)
    with pytest.raises(DataError, match="expected 0-9"):
        fashion_mnist.load(folder)


def test_real_fashion_mnist_payloads(real_fashion):
    """The files on disk are the published Fashion-MNIST: md5 of each decompressed payload."""
    for stem, md5 in fashion_mnist.RAW_MD5.items():
        payload = gzip.decompress((real_fashion / (stem + ".gz")).read_bytes())
        assert hashlib.md5(payload).hexdigest() == md5
    data = fashion_mnist.load(real_fashion)
    assert data["train"][0].shape == (60000, 28, 28) and data["test"][0].shape == (10000, 28, 28)
    assert np.bincount(data["test"][1]).tolist() == [1000] * 10


def test_every_dataset_has_the_interface():
    from fgbench.data.transforms import AUGMENTS

    assert set(DATASETS) == {"fashion_mnist", "cifar100", "living17", "nonliving26", "entity13", "entity30",
                             "tiered_imagenet", "mnist", "cifar10", "cub200", "cars196", "sop"}
    for name, ds in DATASETS.items():
        assert ds.NAME == name and callable(ds.read)
        assert ds.SETTINGS and set(ds.SETTINGS) <= {"coarse_to_fine", "open_set", "closed_set"}
        for setting, definition in ds.SETTINGS.items():
            assert set(definition) == {"train_label", "train_classes", "test_classes"}
            assert definition["train_label"] == ("coarse" if setting == "coarse_to_fine" else "fine")
        if "coarse_to_fine" in ds.SETTINGS:
            assert ds.SETTINGS["coarse_to_fine"] == {"train_label": "coarse", "train_classes": None, "test_classes": None}
        assert isinstance(ds.IMAGE_SIZE, int)
        assert ds.NORMALIZE is None or all(len(v) == 3 for v in ds.NORMALIZE)
        assert set(ds.TRANSFORMS) == {"train", "view", "eval"} and set(ds.TRANSFORMS.values()) <= set(AUGMENTS)
    assert (fashion_mnist.IMAGE_SIZE, fashion_mnist.NORMALIZE) == (28, None)
    assert fashion_mnist.TRANSFORMS == {"train": "none", "view": "crop_flip", "eval": "none"}
    assert cifar100.IMAGE_SIZE == 32 and cifar100.NORMALIZE == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert cifar100.TRANSFORMS == {"train": "rrc_flip", "view": "flip", "eval": "none"}
    # Validation-split defaults: vMF's held-out classes for the DML datasets, 15% for its closed-set ones.
    assert {name: split_defaults(name) for name in DATASETS if split_defaults(name)} == {
        "cub200": {"val_classes": 15}, "cars196": {"val_classes": 15}, "sop": {"val_classes": 1698},
        "mnist": {"val_fraction": 0.15}, "cifar10": {"val_fraction": 0.15},
    }


def test_in_memory_and_memmapped_splits(tmp_path):
    images = (np.arange(5 * 64 * 64) % 251).astype(np.uint8).reshape(5, 64, 64)
    labels = np.array([0, 1, 0, 1, 2])
    split = Split(images, labels, labels, np.arange(5))
    assert is_in_memory(split.images) and is_in_memory(split.subset(labels == 0).images)
    np.save(tmp_path / "x.npy", images)
    mapped = Split(np.load(tmp_path / "x.npy", mmap_mode="r"), labels, labels, np.arange(5))
    assert not is_in_memory(mapped.images)
    sub = mapped.with_classes([1, 2])
    assert not is_in_memory(sub.images) and len(sub.images) == len(sub) == 3
    np.testing.assert_array_equal(sub.images[2], images[4])
    np.testing.assert_array_equal(np.asarray(sub.subset(np.array([True, False, True])).images), images[[1, 4]])
    # Pickled by file name (spawned DataLoader workers), not by value.
    blob = pickle.dumps(sub.images)
    assert len(blob) < 1000 < images.nbytes
    np.testing.assert_array_equal(np.asarray(pickle.loads(blob)), images[[1, 3, 4]])
