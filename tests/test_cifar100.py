"""CIFAR-100 on fixtures in the official on-disk format (cifar-100-python/ pickles); never downloads."""

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from fgbench import config as fgconfig
from fgbench.data import DATASETS, cifar100, load_prepared, prepare
from fgbench.errors import DataError

SPEC = {"val_fraction": 0.2, "split_seed": 0, "max_images_per_class": None,
        "verify": False}  # synthetic files: not the official md5s

# The superclass table of the CIFAR-100 web page.
OFFICIAL = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}


def synthetic_split(n_per_class: int, seed: int):
    """Rows in the official CHW layout: pixel (c, h, w) of image i is (c*1024 + h*32 + w + i) % 256."""
    rng = np.random.default_rng(seed)
    fine = np.repeat(np.arange(100), n_per_class)
    rng.shuffle(fine)
    data = ((np.arange(3072)[None, :] + np.arange(len(fine))[:, None]) % 256).astype(np.uint8)
    return {
        "filenames": [f"img_{i}.png" for i in range(len(fine))],
        "batch_label": "synthetic batch",
        "fine_labels": fine.tolist(),
        "coarse_labels": cifar100.FINE_TO_COARSE[fine].tolist(),
        "data": data,
    }


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(parent, n_train=5, n_test=2):
    """``parent/cifar-100-python/{train,test,meta}`` with ``n_train`` / ``n_test`` images per fine class."""
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    write_pickle(folder / "train", synthetic_split(n_train, seed=0))
    write_pickle(folder / "test", synthetic_split(n_test, seed=1))
    write_pickle(folder / "meta", {"fine_label_names": list(cifar100.FINE_NAMES),
                                   "coarse_label_names": list(cifar100.COARSE_NAMES)})
    return folder


@pytest.fixture
def cifar_root(tmp_path):
    write_cifar(tmp_path / "cifar")
    return tmp_path / "cifar"


def test_registered():
    assert DATASETS["cifar100"] is cifar100
    assert set(cifar100.SETTINGS) == {"coarse_to_fine", "closed_set"}
    assert cifar100.SETTINGS["coarse_to_fine"] == {"train_label": "coarse", "train_classes": None, "test_classes": None}
    assert cifar100.SETTINGS["closed_set"]["train_label"] == "fine"


def test_hierarchy_is_the_official_one():
    assert len(cifar100.FINE_NAMES) == 100 and len(cifar100.COARSE_NAMES) == 20
    assert cifar100.FINE_NAMES == sorted(cifar100.FINE_NAMES) and cifar100.COARSE_NAMES == sorted(cifar100.COARSE_NAMES)
    fine, coarse = cifar100.FINE_NAMES, cifar100.COARSE_NAMES
    f2c = cifar100.FINE_TO_COARSE
    assert f2c.shape == (100,) and np.bincount(f2c).tolist() == [5] * 20
    assert coarse[f2c[fine.index("apple")]] == "fruit_and_vegetables"
    assert coarse[f2c[fine.index("beaver")]] == "aquatic_mammals"
    assert coarse[f2c[fine.index("worm")]] == "non-insect_invertebrates"
    got = {c: " ".join(fine[f] for f in range(100) if f2c[f] == i) for i, c in enumerate(coarse)}
    assert got == OFFICIAL


def test_load_roundtrip(cifar_root):
    folder = cifar100.locate(str(cifar_root), allow_download=False)
    assert folder == cifar_root / "cifar-100-python"
    assert cifar100.locate(str(folder), allow_download=False) == folder  # the folder itself works too
    data = cifar100.load(folder)
    images, fine = data["train"]
    assert images.shape == (500, 32, 32, 3) and images.dtype == np.uint8
    assert fine.dtype == np.int64 and np.bincount(fine).tolist() == [5] * 100
    assert data["test"][0].shape == (200, 32, 32, 3)
    np.testing.assert_array_equal(fine, synthetic_split(5, seed=0)["fine_labels"])
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    for i in (0, 7, 499):
        expected_chw = (c * 1024 + h * 32 + w + i) % 256
        np.testing.assert_array_equal(images[i], expected_chw.transpose(1, 2, 0))
    assert images[0, 0, 1, 0] == 1 and images[0, 1, 0, 0] == 32 and images[0, 0, 0, 1] == 1024 % 256


def test_coarse_labels_contradicting_the_hierarchy(cifar_root):
    path = cifar_root / "cifar-100-python" / "test"
    split = synthetic_split(2, seed=1)
    split["coarse_labels"][3] = (split["coarse_labels"][3] + 1) % 20
    write_pickle(path, split)
    with pytest.raises(DataError, match=rf"{path}: coarse_labels disagree .* 1 image"):
        cifar100.load(cifar_root / "cifar-100-python")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_key"])
def test_corrupt_pickle_names_the_file(cifar_root, damage):
    path = cifar_root / "cifar-100-python" / "train"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-1000])
    elif damage == "garbage":
        path.write_bytes(b"not a pickle at all")
    else:
        split = synthetic_split(5, seed=0)
        del split["coarse_labels"]
        write_pickle(path, split)
    with pytest.raises(DataError, match=str(path)):
        cifar100.load(cifar_root / "cifar-100-python")


def test_missing_under_configured_root(tmp_path):
    with pytest.raises(DataError) as err:
        cifar100.locate(str(tmp_path / "nowhere"), allow_download=False)
    msg = str(err.value)
    assert "datasets.cifar100.root" in msg and str(tmp_path / "nowhere" / "cifar-100-python") in msg
    assert "cifar-100-python/{train,test,meta}" in msg


def test_not_found_anywhere_names_every_path(tmp_path):
    with pytest.raises(DataError) as err:
        cifar100.locate(None, download_dir=str(tmp_path / "dl"), allow_download=False)
    msg = str(err.value)
    assert str(tmp_path / "dl" / "cifar-100-python") in msg and "download disabled" in msg
    assert cifar100.URL in msg and "datasets.cifar100.root" in msg and "cifar-100-python/{train,test,meta}" in msg


def test_found_in_download_dir(cifar_root):
    assert cifar100.locate(None, download_dir=str(cifar_root), allow_download=False) == cifar_root / "cifar-100-python"


def _archive_bytes(tmp_path):
    write_cifar(tmp_path / "src", n_train=1, n_test=1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-100-python", arcname="cifar-100-python")
    return buf.getvalue()


def test_download_is_checked_and_extracted(tmp_path, monkeypatch):
    """The download path with urlretrieve replaced by a local archive: md5 checked, then extracted."""
    payload = _archive_bytes(tmp_path)
    calls = []

    def fake_urlretrieve(url, target):
        calls.append(url)
        with open(target, "wb") as f:
            f.write(payload)

    monkeypatch.setattr(cifar100.urllib.request, "urlretrieve", fake_urlretrieve)
    dl = tmp_path / "dl"
    # A wrong md5: refused, nothing left behind.
    with pytest.raises(DataError, match="md5"):
        cifar100.locate(None, download_dir=str(dl))
    assert not (dl / cifar100.ARCHIVE).exists() and not (dl / "cifar-100-python").exists()
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", hashlib.md5(payload).hexdigest())
    folder = cifar100.locate(None, download_dir=str(dl))
    assert folder == dl / "cifar-100-python" and calls == [cifar100.URL] * 2
    assert cifar100.load(folder)["train"][0].shape == (100, 32, 32, 3)
    assert sorted(p.name for p in dl.iterdir()) == ["cifar-100-python", cifar100.ARCHIVE]


def test_prepare_splits(cifar_root, tmp_path):
    out = tmp_path / "data.npz"
    prepare("cifar100", {**SPEC, "root": str(cifar_root)}, out)
    data = load_prepared(out)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    # Stratified: 20% of each fine class's 5 training images go to validation.
    assert np.bincount(val.fine, minlength=100).tolist() == [1] * 100
    assert np.bincount(train.fine, minlength=100).tolist() == [4] * 100
    assert sorted(np.concatenate([train.index, val.index]).tolist()) == list(range(500))
    assert len(test) == 200 and test.images.shape == (200, 32, 32, 3)
    np.testing.assert_array_equal(train.coarse, cifar100.FINE_TO_COARSE[train.fine])
    assert np.bincount(train.coarse).tolist() == [20] * 20
    assert data.fine_names == cifar100.FINE_NAMES and data.coarse_names == cifar100.COARSE_NAMES
    np.testing.assert_array_equal(data.fine_to_coarse, cifar100.FINE_TO_COARSE)


def test_config_accepts_cifar100():
    cfg = fgconfig.validate({
        "benchmark": {"cifar100": {"coarse_to_fine": ["supervised_coarse"]}},
        "datasets": {"cifar100": {"backbone": {"name": "small_cnn"}}},
        "protocols": {"fewshot_5way": {}},
    })
    assert fgconfig.runs(cfg) == [("cifar100", "coarse_to_fine", "supervised_coarse", 0)]
    spec = fgconfig.train_spec(cfg, "cifar100", "coarse_to_fine", "supervised_coarse", 0)
    assert spec["setting_def"]["train_label"] == "coarse"
