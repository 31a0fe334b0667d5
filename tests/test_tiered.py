"""tieredImageNet on fixture pickles in the distributed format; decoded once into memory-mapped .npy files."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from fgbench.data import DATASETS, is_in_memory, load_prepared, prepare, tiered
from fgbench.data.images import MappedRows
from fgbench.errors import DataError

SPEC = {"val_fraction": 0.25, "split_seed": 0, "max_images_per_class": None}
# train: fine 0, 1 in category 0 and fine 2 in category 1; test: fine 0, 1 in its only category.
TRAIN = {"fine": [0, 1, 2], "coarse": [0, 0, 1], "n": 4,
         "fine_str": ["n01000001", "n01000002", "n01000003"], "coarse_str": {0: "n09000001", 1: "n09000002"}}
TEST = {"fine": [0, 1], "coarse": [0, 0], "n": 3, "fine_str": ["n02000001", "n02000002"], "coarse_str": ["n09000003"]}


def image(split_code: int, k: int, fine: int) -> np.ndarray:
    """84x84 RGB whose pixels tell which image it is: R = k, G = fine, B = split, plus a gradient."""
    img = np.zeros((84, 84, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = k, 40 * fine, split_code
    img[0, :, 0] = np.arange(84)
    return img


def png(img: np.ndarray) -> np.ndarray:
    """Like cv2.imencode: a uint8 buffer of shape (n, 1)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(-1, 1)


def make_split(spec, split_code):
    fine = np.repeat(spec["fine"], spec["n"])
    np.random.default_rng(split_code).shuffle(fine)
    coarse = np.asarray(spec["coarse"])[fine]
    images = [image(split_code, k, f) for k, f in enumerate(fine)]
    labels = {"label_specific": fine, "label_general": coarse,
              "label_specific_str": spec["fine_str"], "label_general_str": spec["coarse_str"]}
    return images, labels


def write_tiered(folder, damage=None):
    folder.mkdir(parents=True)
    out = {}
    for split, spec, code in (("train", TRAIN, 1), ("val", TEST, 2), ("test", TEST, 3)):
        images, labels = make_split(spec, code)
        blobs = [png(im) for im in images]
        if damage == "length" and split == "test":
            blobs = blobs[:-1]
        if damage == "png" and split == "test":
            blobs[4] = np.frombuffer(b"\x89PNG broken", dtype=np.uint8).reshape(-1, 1)
        with open(folder / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump(blobs, f, protocol=2)
        with open(folder / f"{split}_labels.pkl", "wb") as f:
            pickle.dump(labels, f, protocol=2)
        out[split] = (np.stack(images), labels)
    return out


@pytest.fixture
def tiered_root(tmp_path):
    return tmp_path / "tiered", write_tiered(tmp_path / "tiered")


def test_interface_constants():
    ds = DATASETS["tiered_imagenet"]
    assert ds is tiered and ds.IMAGE_SIZE == 84
    assert ds.NORMALIZE == ((0.4783, 0.4564, 0.4102), (0.2795, 0.2736, 0.2859))
    assert ds.TRANSFORMS == {"train": "moco_v2_noblur", "view": "pad_crop_flip", "eval": "none"}
    assert ds.SETTINGS["coarse_to_fine"]["train_label"] == "coarse"


def test_prepare_memmaps_global_ids(tiered_root, tmp_path):
    root, raw = tiered_root
    out = tmp_path / "prep" / "data.npz"
    prepare("tiered_imagenet", {**SPEC, "root": str(root)}, out)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "data.npz", "test_images.npy", "train_images.npy", "val_images.npy"]
    data = load_prepared(out)
    assert data.fine_names == TRAIN["fine_str"] + TEST["fine_str"]
    assert data.coarse_names == ["n09000001", "n09000002", "n09000003"]
    np.testing.assert_array_equal(data.fine_to_coarse, [0, 0, 1, 2, 2])
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    for split in (train, val, test):
        assert isinstance(split.images, np.memmap) and not is_in_memory(split.images)
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (84, 84, 3)
        np.testing.assert_array_equal(split.coarse, data.fine_to_coarse[split.fine])
    assert len(train) == 9 and len(val) == 3 and np.bincount(val.fine).tolist() == [1, 1, 1]
    assert sorted(np.concatenate([train.index, val.index]).tolist()) == list(range(12))
    # Images are the decoded PNGs (RGB, lossless), in the order of the split's index.
    train_images, train_labels = raw["train"]
    np.testing.assert_array_equal(np.asarray(train.images), train_images[train.index])
    np.testing.assert_array_equal(train.fine, train_labels["label_specific"][train.index])
    test_images, test_labels = raw["test"]
    assert len(test) == 6 and set(test.fine) == {3, 4} and set(test.coarse) == {2}
    np.testing.assert_array_equal(test.fine, test_labels["label_specific"] + 3)
    np.testing.assert_array_equal(np.asarray(test.images), test_images)
    # A subset stays on disk and reads the right rows.
    sub = test.with_classes([4])
    assert isinstance(sub.images, MappedRows) and not is_in_memory(sub.images) and len(sub) == 3
    np.testing.assert_array_equal(sub.images[1], test_images[test.fine == 4][1])
    np.testing.assert_array_equal(np.asarray(sub.images[np.array([0, 2])]), test_images[test.fine == 4][[0, 2]])


def test_nested_folder_caps_and_other_name(tmp_path):
    write_tiered(tmp_path / "root" / "tiered-imagenet")
    caps = {"train": 2, "val": None, "test": 1}
    out = tmp_path / "p" / "small.npz"
    prepare("tiered_imagenet", {**SPEC, "root": str(tmp_path / "root"), "max_images_per_class": caps}, out)
    assert (tmp_path / "p" / "small.train_images.npy").is_file()
    data = load_prepared(out)
    assert np.bincount(data.splits["train"].fine).tolist() == [2, 2, 2]
    assert data.splits["test"].images.shape == (2, 84, 84, 3)


def test_missing_files_named(tmp_path):
    write_tiered(tmp_path / "t")
    (tmp_path / "t" / "test_labels.pkl").unlink()
    with pytest.raises(DataError) as err:
        prepare("tiered_imagenet", {**SPEC, "root": str(tmp_path / "t")}, tmp_path / "d.npz")
    msg = str(err.value)
    assert "datasets.tiered_imagenet.root" in msg and "missing test_labels.pkl" in msg
    assert "{train,test}_images_png.pkl" in msg and "tiered-imagenet.tar" in msg
    with pytest.raises(DataError, match=r"datasets.tiered_imagenet.root is unset"):
        tiered.locate(None, download_dir=str(tmp_path / "dl"))


def test_val_pickle_not_needed(tmp_path):
    write_tiered(tmp_path / "t")
    for kind in ("images_png", "labels"):
        (tmp_path / "t" / f"val_{kind}.pkl").unlink()
    prepare("tiered_imagenet", {**SPEC, "root": str(tmp_path / "t")}, tmp_path / "d.npz")


@pytest.mark.parametrize("damage, match", [
    ("length", r"test_images_png.pkl holds 5 images but its labels list 6"),
    ("png", r"image 4 of the tieredImageNet test split .* cannot be decoded"),
])
def test_damaged_pickles(tmp_path, damage, match):
    write_tiered(tmp_path / "t", damage=damage)
    out = tmp_path / "p" / "data.npz"
    with pytest.raises(DataError, match=match):
        prepare("tiered_imagenet", {**SPEC, "root": str(tmp_path / "t")}, out)
    assert not out.exists() and not list(out.parent.glob(".*"))  # no half-written file


def test_bad_labels(tmp_path):
    write_tiered(tmp_path / "t")
    path = tmp_path / "t" / "train_labels.pkl"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="train_labels.pkl is not a readable tieredImageNet pickle"):
        tiered.read({"root": str(tmp_path / "t")})
    _, labels = make_split(TRAIN, 1)
    idx = np.flatnonzero(labels["label_specific"] == 0)[0]
    labels["label_general"][idx] = 1
    with open(path, "wb") as f:
        pickle.dump(labels, f)
    with pytest.raises(DataError, match="fine class 0 has images in categories \\[0, 1\\]"):
        tiered.read({"root": str(tmp_path / "t")})
    del labels["label_general_str"]
    with open(path, "wb") as f:
        pickle.dump(labels, f)
    with pytest.raises(DataError, match="lacks the key.*label_general_str"):
        tiered.read({"root": str(tmp_path / "t")})


def test_missing_npy_is_reported(tiered_root, tmp_path):
    root, _ = tiered_root
    out = tmp_path / "prep" / "data.npz"
    prepare("tiered_imagenet", {**SPEC, "root": str(root)}, out)
    (out.parent / "val_images.npy").unlink()
    with pytest.raises(DataError, match=r"val_images.npy are missing.*rerun `fgbench prepare`"):
        load_prepared(out)
