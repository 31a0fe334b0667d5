"""BREEDS datasets on a tiny ImageNet folder in the real layout, ImageFiles, and the val rearrangement."""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgbench import cli
from fgbench.data import DATASETS, imagenet, is_in_memory, load_prepared, prepare
from fgbench.data.breeds import REQUIRED_FILES, breeds_classes
from fgbench.data.images import ImageFiles
from fgbench.errors import ConfigError, DataError

BREEDS_DIR = Path(__file__).resolve().parents[2] / "shared/data/breeds"
needs_breeds = pytest.mark.skipif(
    not all((BREEDS_DIR / f).is_file() for f in REQUIRED_FILES),
    reason=f"BREEDS hierarchy files not found in {BREEDS_DIR} (see shared/data/breeds/SOURCE.md)",
)
N_TRAIN, N_VAL = 3, 2
SPEC = {"val_fraction": 1 / 3, "split_seed": 0, "max_images_per_class": None, "hierarchy_dir": str(BREEDS_DIR)}


def write_jpeg(path: Path, value: int, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value % 256, 128, 255 - value % 256)).save(path, "JPEG")


def val_name(k: int) -> str:
    return f"ILSVRC2012_val_{k:08d}.JPEG"


@pytest.fixture(scope="module")
def living17():
    return breeds_classes("living17", BREEDS_DIR)


def write_imagenet(root: Path, living17, size: int = 16) -> Path:
    """``root/{train,val}/<wnid>/*.JPEG`` (``size`` x ``size``) for the 68 living17 subclasses,
    plus the flat val and its CSV."""
    rows = ["ImageId,PredictionString"]
    k = 0
    for i, wnid in enumerate(w for ws in living17.source_wnids for w in ws):
        for j in range(N_TRAIN):
            write_jpeg(root / "train" / wnid / f"{wnid}_{j}.JPEG", i, size)
        for _ in range(N_VAL):
            k += 1
            write_jpeg(root / "val" / wnid / val_name(k), i, size)
            os.makedirs(root / "flat_val", exist_ok=True)
            shutil.copy(root / "val" / wnid / val_name(k), root / "flat_val" / val_name(k))
            rows.append(f"ILSVRC2012_val_{k:08d},{wnid} 1 2 10 12 {wnid} 3 4 5 6")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory, living17):
    return write_imagenet(tmp_path_factory.mktemp("imagenet"), living17)


@pytest.fixture
def copy_root(imagenet_root, tmp_path):
    """A private copy to damage."""
    dst = tmp_path / "imagenet"
    shutil.copytree(imagenet_root / "train", dst / "train")
    shutil.copytree(imagenet_root / "val", dst / "val")
    return dst


def test_interface_constants():
    for name in ("living17", "nonliving26", "entity13", "entity30"):
        ds = DATASETS[name]
        assert ds.NAME == name and ds.IMAGE_SIZE == 224
        assert ds.NORMALIZE == ((0.4717, 0.4499, 0.3837), (0.2600, 0.2516, 0.2575))
        assert ds.TRANSFORMS == {"train": "moco_v2", "view": "resize_random_crop_flip", "eval": "resize_center_crop"}
        assert ds.SETTINGS["coarse_to_fine"] == {"train_label": "coarse", "train_classes": None, "test_classes": None}


# --------------------------------------------------------------------------- ImageFiles


def test_image_files_indexing(tmp_path):
    for k in range(4):
        write_jpeg(tmp_path / "c" / f"{k}.jpg", 60 * k, size=8 + k)
    files = ImageFiles(tmp_path, [f"c/{k}.jpg" for k in range(4)])
    assert len(files) == 4 and not is_in_memory(files)
    img = files[2]
    assert img.dtype == np.uint8 and img.shape == (10, 10, 3) and abs(int(img[0, 0, 0]) - 120) < 8
    assert files[np.int64(3)].shape == (11, 11, 3)
    sub = files[np.array([3, 1])]
    assert isinstance(sub, ImageFiles) and list(sub.paths) == ["c/3.jpg", "c/1.jpg"]
    assert list(files[np.array([True, False, False, True])].paths) == ["c/0.jpg", "c/3.jpg"]
    assert len(files[1:3]) == 2 and files.path(0) == tmp_path / "c/0.jpg"
    # Grayscale files come back as RGB.
    Image.new("L", (5, 5), 77).save(tmp_path / "c/gray.png")
    assert ImageFiles(tmp_path, ["c/gray.png"])[0].shape == (5, 5, 3)


def test_image_files_bad_file(tmp_path):
    (tmp_path / "bad.JPEG").write_bytes(b"\x00garbage, not a JPEG" * 10)
    files = ImageFiles(tmp_path, ["bad.JPEG", "gone.JPEG"])
    with pytest.raises(DataError, match=rf"{tmp_path / 'bad.JPEG'} cannot be decoded.*re-extract"):
        files[0]
    with pytest.raises(DataError, match=rf"{tmp_path / 'gone.JPEG'} is missing"):
        files[1]


# --------------------------------------------------------------------------- prepare / load


@needs_breeds
def test_prepare_living17(imagenet_root, living17, tmp_path):
    out = tmp_path / "data.npz"
    prepare("living17", {**SPEC, "root": str(imagenet_root)}, out)
    data = load_prepared(out)
    flat = [w for ws in living17.source_wnids for w in ws]
    assert len(data.coarse_names) == 17 and len(data.fine_names) == 68
    assert data.coarse_names[:3] == ["salamander", "turtle", "lizard"]
    np.testing.assert_array_equal(data.fine_to_coarse, np.repeat(np.arange(17), 4))
    # Fine ids: positions in the flattened breeds_helpers order (not sorted).
    assert [n.split()[0] for n in data.fine_names] == flat
    assert data.fine_names[0].split()[0] == living17.source_wnids[0][0]
    assert data.fine_names[4 * 8 + 2].split()[0] == living17.source_wnids[8][2]
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert isinstance(train.images, ImageFiles) and not is_in_memory(train.images)
    assert len(train) + len(val) == 68 * N_TRAIN and np.bincount(val.fine, minlength=68).tolist() == [1] * 68
    assert train.images.root == imagenet_root / "train" and test.images.root == imagenet_root / "val"
    np.testing.assert_array_equal(train.coarse, data.fine_to_coarse[train.fine])
    # The test split is the val images of the same 68 subclasses, with fine labels.
    assert len(test) == 68 * N_VAL and np.bincount(test.fine).tolist() == [N_VAL] * 68
    for split in (train, val, test):
        assert [p.split("/")[0] for p in split.images.paths] == [flat[f] for f in split.fine]
    img = test.images[5]
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert abs(int(img[8, 8, 0]) - test.fine[5]) < 8  # the class's colour
    sub = test.with_classes([0, 1])
    assert isinstance(sub.images, ImageFiles) and len(sub) == 2 * N_VAL


@needs_breeds
def test_kaggle_layout_and_caps(imagenet_root, tmp_path):
    kaggle = tmp_path / "kaggle"
    (kaggle / "Data").mkdir(parents=True)
    os.symlink(imagenet_root, kaggle / "Data" / "CLS-LOC")
    caps = {"train": 1, "val": None, "test": 1}
    prepare("living17", {**SPEC, "root": str(kaggle), "max_images_per_class": caps}, tmp_path / "d.npz")
    data = load_prepared(tmp_path / "d.npz")
    assert data.splits["train"].images.root == kaggle / "Data/CLS-LOC/train"
    assert np.bincount(data.splits["test"].fine).tolist() == [1] * 68
    assert np.bincount(data.splits["train"].fine).tolist() == [1] * 68


@needs_breeds
def test_breeds_split_rand_uses_novel_target_classes(imagenet_root, tmp_path):
    classes = breeds_classes("living17", BREEDS_DIR, "rand")
    prepare("living17", {**SPEC, "root": str(imagenet_root), "breeds_split": "rand"}, tmp_path / "d.npz")
    data = load_prepared(tmp_path / "d.npz")
    source = [w for ws in classes.source_wnids for w in ws]
    target = [w for ws in classes.target_wnids for w in ws]
    assert [n.split()[0] for n in data.fine_names] == source + target
    np.testing.assert_array_equal(data.fine_to_coarse, np.concatenate([np.repeat(np.arange(17), 2)] * 2))
    train, test = data.splits["train"], data.splits["test"]
    assert set(train.fine) == set(range(34)) and set(test.fine) == set(range(34, 68))
    assert [p.split("/")[0] for p in test.images.paths] == [data.fine_names[f].split()[0] for f in test.fine]
    np.testing.assert_array_equal(test.coarse, data.fine_to_coarse[test.fine])


def test_bad_breeds_split_value():
    with pytest.raises(ConfigError, match="datasets.living17.breeds_split.*rand, good, bad"):
        DATASETS["living17"].read({"breeds_split": "random", "hierarchy_dir": str(BREEDS_DIR)})


@needs_breeds
def test_root_missing(tmp_path):
    with pytest.raises(DataError, match=r"set datasets.entity13.root .*train/<wnid>/\*.JPEG"):
        prepare("entity13", {**SPEC, "root": None}, tmp_path / "d.npz")
    with pytest.raises(DataError, match=rf"datasets.living17.root = {tmp_path / 'nope'} does not exist"):
        prepare("living17", {**SPEC, "root": str(tmp_path / "nope")}, tmp_path / "d.npz")
    assert not (tmp_path / "d.npz").exists()


def test_hierarchy_dir_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"datasets.living17.hierarchy_dir = .*class_hierarchy.txt"):
        imagenet.locate_hierarchy("living17", tmp_path)


@needs_breeds
def test_hierarchy_download_is_checked(tmp_path, monkeypatch):
    calls = []

    def fake_urlretrieve(url, target):
        calls.append(url)
        shutil.copy(BREEDS_DIR / url.rsplit("/", 1)[1], target)

    monkeypatch.setattr(imagenet.urllib.request, "urlretrieve", fake_urlretrieve)
    folder = imagenet.locate_hierarchy("living17", None, tmp_path / "dl")
    assert folder == tmp_path / "dl" / "breeds" and len(calls) == 3
    assert all(u.startswith(imagenet.HIERARCHY_URL) for u in calls)
    monkeypatch.setitem(imagenet.HIERARCHY_SHA256, "node_names.txt", hashlib.sha256(b"other").hexdigest())
    with pytest.raises(DataError, match="sha256"):
        imagenet.download_hierarchy(tmp_path / "dl2")
    with pytest.raises(DataError, match="download disabled.*datasets.living17.hierarchy_dir"):
        imagenet.locate_hierarchy("living17", None, tmp_path / "empty", allow_download=False)


@needs_breeds
def test_flat_val_names_the_fix(imagenet_root, copy_root, tmp_path):
    shutil.rmtree(copy_root / "val")
    shutil.copytree(imagenet_root / "flat_val", copy_root / "val")
    shutil.copy(imagenet_root / "LOC_val_solution.csv", copy_root / "LOC_val_solution.csv")
    with pytest.raises(DataError) as err:
        prepare("living17", {**SPEC, "root": str(copy_root)}, tmp_path / "d.npz")
    msg = str(err.value)
    assert "flat" in msg and "fgbench rearrange-val" in msg and "rearrange_imagenet_val" in msg
    assert "datasets.living17.val_root" in msg and str(copy_root / "LOC_val_solution.csv") in msg


@needs_breeds
def test_missing_and_empty_wnid_folders(copy_root, living17, tmp_path):
    wnid = living17.source_wnids[3][1]
    shutil.rmtree(copy_root / "train" / wnid)
    with pytest.raises(DataError, match=rf"1 ImageNet class folder.*missing in the train folder .*: {wnid} "):
        prepare("living17", {**SPEC, "root": str(copy_root)}, tmp_path / "d.npz")
    (copy_root / "train" / wnid).mkdir()
    (copy_root / "train" / wnid / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=rf"no images .*{copy_root / 'train' / wnid}"):
        prepare("living17", {**SPEC, "root": str(copy_root)}, tmp_path / "d.npz")
    assert not (tmp_path / "d.npz").exists()


@needs_breeds
def test_corrupt_jpeg_is_reported_when_read(copy_root, tmp_path):
    prepare("living17", {**SPEC, "root": str(copy_root)}, tmp_path / "d.npz")
    test = load_prepared(tmp_path / "d.npz").splits["test"]
    bad = test.images.path(7)
    bad.write_bytes(b"this is not a JPEG at all" * 20)
    with pytest.raises(DataError, match=rf"{bad} cannot be decoded.*re-extract"):
        test.images[7]
    test.images[6]  # the others still read


# --------------------------------------------------------------------------- rearrange-val


def test_rearrange_val(imagenet_root, tmp_path):
    out = tmp_path / "val_sorted"
    counts = imagenet.rearrange_val(imagenet_root / "flat_val", imagenet_root / "LOC_val_solution.csv", out)
    assert counts == {"images": 68 * N_VAL, "classes": 68}
    for wnid_dir in (imagenet_root / "val").iterdir():
        got = sorted(p.name for p in (out / wnid_dir.name).iterdir())
        assert got == sorted(p.name for p in wnid_dir.iterdir())
    link = next((out / wnid_dir.name).iterdir())
    assert link.is_symlink() and link.resolve() == (imagenet_root / "flat_val" / link.name).resolve()
    assert len(list((imagenet_root / "flat_val").iterdir())) == 68 * N_VAL  # untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    with pytest.raises(DataError, match="already exists"):
        imagenet.rearrange_val(imagenet_root / "flat_val", imagenet_root / "LOC_val_solution.csv", out)


@needs_breeds
def test_rearranged_val_feeds_breeds(imagenet_root, tmp_path):
    out = tmp_path / "val_sorted"
    rc = cli.main(["rearrange-val", "--val-dir", str(imagenet_root / "flat_val"),
                   "--solution", str(imagenet_root / "LOC_val_solution.csv"), "--out", str(out), "--copy"])
    assert rc == 0 and not next(out.iterdir()).is_symlink()
    spec = {**SPEC, "root": str(imagenet_root), "val_root": str(out)}
    prepare("living17", spec, tmp_path / "d.npz")
    test = load_prepared(tmp_path / "d.npz").splits["test"]
    assert test.images.root == out and len(test) == 68 * N_VAL and test.images[0].shape == (16, 16, 3)


def test_rearrange_val_missing_image(imagenet_root, tmp_path, capsys):
    flat = tmp_path / "flat"
    shutil.copytree(imagenet_root / "flat_val", flat)
    (flat / val_name(5)).unlink()
    out = tmp_path / "out"
    msg = rf"1 of the 136 images listed in .* are missing in {flat}: ILSVRC2012_val_00000005"
    with pytest.raises(DataError, match=msg):
        imagenet.rearrange_val(flat, imagenet_root / "LOC_val_solution.csv", out)
    assert not out.exists()
    rc = cli.main(["rearrange-val", "--val-dir", str(flat), "--solution",
                   str(imagenet_root / "LOC_val_solution.csv"), "--out", str(out)])
    assert rc == 2 and "ILSVRC2012_val_00000005" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("text, match", [
    ("ImageId,Label\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n", "header"),
    ("ImageId,PredictionString\nILSVRC2012_val_00000001,dog 1 2 3 4\n", "line 2"),
    ("ImageId,PredictionString\nA,n01440764 1\nA,n01440764 1\n", "listed twice"),
    ("ImageId,PredictionString\n", "lists no images"),
])
def test_bad_solution_csv(tmp_path, text, match):
    (tmp_path / "flat").mkdir()
    (tmp_path / "sol.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        imagenet.rearrange_val(tmp_path / "flat", tmp_path / "sol.csv", tmp_path / "out")
