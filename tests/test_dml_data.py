"""CUB-200-2011, Cars196, SOP, MNIST and CIFAR-10 on tiny fixtures in their official layouts
(never downloads), and the held-out-class validation split."""

import gzip
import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import write_fashion
from fgbench import config as fgconfig
from fgbench.data import DATASETS, cars, cifar10, cub, load_prepared, mnist, prepare, sop
from fgbench.errors import ConfigError, DataError

SPEC = {"val_fraction": 0.1, "split_seed": 0, "max_images_per_class": None,
        "verify": False}  # synthetic files: not the official md5s


def jpeg_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value % 256, 40, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def classes_of(split):
    return set(np.unique(split.fine).tolist())


# --------------------------------------------------------------------------- CUB-200-2011


def write_cub(parent, n_classes=200):
    """``parent/CUB_200_2011``: class c (1-based) has 1 + c % 2 images, 8x8 JPEGs."""
    folder = parent / "CUB_200_2011"
    images, labels, classes = [], [], []
    for c in range(1, n_classes + 1):
        name = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {name}")
        (folder / "images" / name).mkdir(parents=True)
        for k in range(1 + c % 2):
            rel = f"{name}/Bird_{c}_{k:04d}.jpg"
            (folder / "images" / rel).write_bytes(jpeg_bytes(c))
            images.append(rel)
            labels.append(c)
    (folder / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(images, 1)))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(labels, 1)))
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    (folder / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, len(images) + 1)))
    return folder


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    parent = tmp_path_factory.mktemp("cub")
    write_cub(parent)
    return parent


def test_cub_prepare_holds_out_classes(cub_root, tmp_path):
    out = tmp_path / "data.npz"
    prepare("cub200", {**SPEC, "root": str(cub_root)}, out)  # val_classes: the dataset's 15
    data = load_prepared(out)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert len(classes_of(train)) == 85 and len(classes_of(val)) == 15
    assert classes_of(train) | classes_of(val) == set(range(100)) and not classes_of(train) & classes_of(val)
    assert classes_of(test) == set(range(100, 200))
    # Every image of classes 1-100 in train or val (none lost), every other one in test.
    assert len(train) + len(val) == sum(1 + c % 2 for c in range(1, 101)) and len(test) == 150
    assert sorted(np.concatenate([train.index, val.index]).tolist()) == list(range(len(train) + len(val)))
    assert len(data.fine_names) == 200 and data.fine_names[0] == "Bird_1" and data.fine_names[199] == "Bird_200"
    assert data.coarse_names == data.fine_names
    np.testing.assert_array_equal(data.fine_to_coarse, np.arange(200))
    np.testing.assert_array_equal(test.coarse, test.fine)
    # Files stay files, and are readable: image of class id c (fine c - 1) has red value c.
    assert test.images.paths[0] == "101.Bird_101/Bird_101_0000.jpg"
    image = test.images[0]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and abs(int(image[..., 0].mean()) - 101) < 8
    # The setting selects nothing more (train_classes / test_classes None).
    assert cub.SETTINGS == {"open_set": {"train_label": "fine", "train_classes": None, "test_classes": None}}


def test_cub_held_out_classes_are_seeded(cub_root, tmp_path):
    def val_classes(**cfg):
        prepare("cub200", {**SPEC, "root": str(cub_root / "CUB_200_2011"), **cfg}, tmp_path / "d.npz")
        return classes_of(load_prepared(tmp_path / "d.npz").splits["val"])

    first = val_classes()
    assert val_classes() == first and val_classes(split_seed=1) != first
    assert len(val_classes(val_classes=5)) == 5  # config overrides the dataset's default
    with pytest.raises(ConfigError, match="val_classes' = 100 holds out every one of the 100"):
        val_classes(val_classes=100)


def test_cub_missing_files_are_named(tmp_path, cub_root):
    with pytest.raises(DataError) as err:
        cub.read({"root": str(tmp_path)})
    msg = str(err.value)
    assert "datasets.cub200.root" in msg and "images.txt" in msg and "image_class_labels.txt" in msg
    assert "classes.txt" in msg and str(tmp_path / "CUB_200_2011") in msg
    with pytest.raises(DataError, match="datasets.cub200.root"):
        cub.read({"root": None})
    # An image listed in images.txt but absent from disk.
    folder = write_cub(tmp_path / "broken", n_classes=120)
    (folder / "images" / "007.Bird_7" / "Bird_7_0001.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 180 images are missing .*Bird_7_0001.jpg"):
        cub.read({"root": str(tmp_path / "broken")})


# --------------------------------------------------------------------------- Cars196


def write_cars(folder, n_classes=196, class_names=True):
    """``folder/cars_annos.mat`` (the real struct layout) and ``folder/car_ims``: one image per class,
    two for class 1; the official test flag alternates (it must be ignored)."""
    import scipy.io

    (folder / "car_ims").mkdir(parents=True)
    classes = [1, *range(1, n_classes + 1)]
    dtype = [(f, "O") for f in ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")]
    ann = np.zeros((1, len(classes)), dtype=dtype)
    for i, c in enumerate(classes):
        rel = f"car_ims/{i + 1:06d}.jpg"
        (folder / rel).write_bytes(jpeg_bytes(c))
        ann[0, i] = (np.array([rel]), *(np.array([[v]], dtype=np.uint8) for v in (1, 2, 7, 8)),
                     np.array([[c]], dtype=np.uint8), np.array([[i % 2]], dtype=np.uint8))
    mat = {"annotations": ann}
    if class_names:
        mat["class_names"] = np.array([f"Make{c} Model {2000 + c % 13}" for c in range(1, 197)], dtype=object).reshape(1, -1)
    scipy.io.savemat(folder / "cars_annos.mat", mat)
    return folder


def test_cars_prepare_splits_by_class_id(tmp_path):
    write_cars(tmp_path / "cars196")
    out = tmp_path / "data.npz"
    prepare("cars196", {**SPEC, "root": str(tmp_path)}, out)  # root: the parent of cars196/ works
    data = load_prepared(out)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert (len(classes_of(train)), len(classes_of(val))) == (83, 15)
    assert classes_of(train) | classes_of(val) == set(range(98)) and classes_of(test) == set(range(98, 196))
    assert len(train) + len(val) == 99 and len(test) == 98  # the test flag is ignored
    assert data.fine_names[0] == "Make1 Model 2001" and data.coarse_names == data.fine_names
    assert test.images.paths[0] == "car_ims/000100.jpg" and test.fine[0] == 98
    assert test.images[0].shape == (8, 8, 3)


def test_cars_without_class_names(tmp_path):
    data = cars.read({"root": str(write_cars(tmp_path / "c", class_names=False))})
    assert data["fine_names"][97] == "class 98" and len(data["fine_names"]) == 196


def test_cars_missing_annotations_are_named(tmp_path):
    (tmp_path / "car_ims").mkdir()
    with pytest.raises(DataError) as err:
        cars.read({"root": str(tmp_path)})
    msg = str(err.value)
    assert "datasets.cars196.root" in msg and "cars_annos.mat" in msg and "car_ims" in msg
    (tmp_path / "cars_annos.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="cars_annos.mat is not a readable MATLAB file"):
        cars.read({"root": str(tmp_path)})


# --------------------------------------------------------------------------- Stanford Online Products


def write_sop(parent, n_train=30, n_test=20, per_class=2):
    """``parent/Stanford_Online_Products`` with the Ebay files: class k in super-class (k - 1) % 12."""
    folder = parent / "Stanford_Online_Products"
    rows = {"Ebay_train.txt": [], "Ebay_test.txt": []}
    image_id = 0
    for k in range(1, n_train + n_test + 1):
        s = (k - 1) % 12 + 1
        category = f"{sop.COARSE_NAMES[s - 1]}_final"
        (folder / category).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            image_id += 1
            rel = f"{category}/{1000 + k}_{j}.JPG"
            (folder / rel).write_bytes(jpeg_bytes(k))
            rows["Ebay_train.txt" if k <= n_train else "Ebay_test.txt"].append(f"{image_id} {k} {s} {rel}")
    for name, lines in rows.items():
        (folder / name).write_text("\n".join([sop.HEADER, *lines]) + "\n")
    return folder


def test_sop_prepare_classes_and_superclasses(tmp_path):
    write_sop(tmp_path)
    out = tmp_path / "data.npz"
    prepare("sop", {**SPEC, "root": str(tmp_path), "val_classes": 6}, out)
    data = load_prepared(out)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert (len(classes_of(train)), len(classes_of(val))) == (24, 6)
    assert classes_of(train) | classes_of(val) == set(range(30)) and classes_of(test) == set(range(30, 50))
    assert (len(train), len(val), len(test)) == (48, 12, 40)
    assert data.coarse_names == sop.COARSE_NAMES and len(data.coarse_names) == 12
    np.testing.assert_array_equal(data.fine_to_coarse, np.arange(50) % 12)
    for split in (train, val, test):
        np.testing.assert_array_equal(split.coarse, split.fine % 12)
    assert data.fine_names[0] == "bicycle/1001" and data.fine_names[13] == "cabinet/1014"
    assert test.images.paths[0] == "lamp_final/1031_0.JPG" and test.images[0].shape == (8, 8, 3)
    assert set(sop.SETTINGS) == {"open_set", "coarse_to_fine"}
    # The dataset's default (1,698 classes) needs the real data: a tiny copy says so.
    with pytest.raises(ConfigError, match="val_classes' = 1698 holds out every one of the 30"):
        prepare("sop", {**SPEC, "root": str(tmp_path / "Stanford_Online_Products")}, out)


def test_sop_bad_files(tmp_path):
    with pytest.raises(DataError) as err:
        sop.read({"root": str(tmp_path)})
    msg = str(err.value)
    assert "datasets.sop.root" in msg and "Ebay_train.txt" in msg and "Ebay_test.txt" in msg
    folder = write_sop(tmp_path, n_train=3, n_test=2, per_class=1)
    lines = (folder / "Ebay_train.txt").read_text().splitlines()
    (folder / "Ebay_train.txt").write_text("\n".join(lines[1:]) + "\n")  # no header
    with pytest.raises(DataError, match="expected the header 'image_id class_id super_class_id path'"):
        sop.read({"root": str(tmp_path)})
    lines[1] = lines[1].replace(" 1 1 ", " 1 2 ")  # super-class 2 (cabinet) for a bicycle_final image
    (folder / "Ebay_train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="bicycle_final/1001_0.JPG has super_class_id 2"):
        sop.read({"root": str(tmp_path)})


# --------------------------------------------------------------------------- MNIST


def test_mnist_closed_and_open_set(tmp_path):
    folder = write_fashion(tmp_path / "mnist", n_train=20, n_test=4)  # the same four IDX files
    out = tmp_path / "data.npz"
    prepare("mnist", {**SPEC, "val_fraction": 0.15, "root": str(folder)}, out)
    data = load_prepared(out)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert np.bincount(val.fine).tolist() == [3] * 10 and np.bincount(train.fine).tolist() == [17] * 10
    assert len(test) == 40 and train.images.shape[1:] == (28, 28)
    assert data.fine_names == [str(d) for d in range(10)] and data.coarse_names == data.fine_names
    np.testing.assert_array_equal(train.coarse, train.fine)
    assert mnist.SETTINGS["closed_set"] == {"train_label": "fine", "train_classes": None, "test_classes": None}
    open_set = mnist.SETTINGS["open_set"]
    assert classes_of(train.with_classes(open_set["train_classes"])) == {0, 1, 2, 3, 4}
    assert classes_of(test.with_classes(open_set["test_classes"])) == {5, 6, 7, 8, 9}
    assert (mnist.IMAGE_SIZE, mnist.NORMALIZE, mnist.TRANSFORMS) == (28, None, DATASETS["fashion_mnist"].TRANSFORMS)
    # Held-out classes would mix with open_set's class selection: refused.
    with pytest.raises(ConfigError, match="open_set"):
        prepare("mnist", {**SPEC, "val_classes": 2, "root": str(folder)}, out)


def test_mnist_not_found_names_every_path(tmp_path):
    with pytest.raises(DataError) as err:
        mnist.locate(None, download_dir=str(tmp_path / "dl"), allow_download=False)
    msg = str(err.value)
    assert str(tmp_path / "dl") in msg and "download disabled" in msg and "datasets.mnist.root" in msg
    with pytest.raises(DataError, match=r"datasets.mnist.root = .*t10k-labels-idx1-ubyte\[.gz\]"):
        mnist.locate(str(tmp_path))


def test_mnist_download_checks_md5s(tmp_path, monkeypatch):
    src = write_fashion(tmp_path / "src", n_train=1, n_test=1)
    calls = []

    def fake_urlretrieve(url, target):
        calls.append(url)
        if url.startswith(mnist.MIRRORS[0]):
            raise OSError("mirror down")
        with open(target, "wb") as f:
            f.write((src / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr("urllib.request.urlretrieve", fake_urlretrieve)
    dl = tmp_path / "dl"
    with pytest.raises(DataError, match="md5"):  # the published md5s do not match the fixture
        mnist.locate(None, download_dir=str(dl))
    assert not list(dl.iterdir())
    monkeypatch.setattr(mnist, "GZ_MD5", {s: hashlib.md5((src / f"{s}.gz").read_bytes()).hexdigest() for s in mnist.GZ_MD5})
    calls.clear()
    assert mnist.locate(None, download_dir=str(dl)) == dl
    assert len(calls) == 8 and calls[1].startswith(mnist.MIRRORS[1])  # the second mirror after the first fails
    assert mnist.load(dl)["train"][0].shape == (10, 28, 28)
    assert gzip.decompress((dl / "train-labels-idx1-ubyte.gz").read_bytes())[:4] == b"\x00\x00\x08\x01"


# --------------------------------------------------------------------------- CIFAR-10


def write_cifar10(parent, per_class_per_batch=4, n_test=2):
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n_per_class, offset):
        labels = np.repeat(np.arange(10), n_per_class)
        rng.shuffle(labels)
        data = ((np.arange(3072)[None, :] + offset + np.arange(len(labels))[:, None]) % 256).astype(np.uint8)
        return {"batch_label": "synthetic", "labels": labels.tolist(), "data": data,
                "filenames": [f"img_{offset + i}.png" for i in range(len(labels))]}

    for i, name in enumerate(cifar10.TRAIN_FILES):
        with open(folder / name, "wb") as f:
            pickle.dump(batch(per_class_per_batch, 1000 * i), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test, 7000), f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(cifar10.FINE_NAMES), "num_cases_per_batch": 40, "num_vis": 3072}, f, protocol=2)
    return folder


def test_cifar10_closed_set(tmp_path):
    write_cifar10(tmp_path / "c")
    out = tmp_path / "data.npz"
    prepare("cifar10", {**SPEC, "val_fraction": 0.15, "root": str(tmp_path / "c")}, out)
    data = load_prepared(out)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert np.bincount(val.fine).tolist() == [3] * 10 and np.bincount(train.fine).tolist() == [17] * 10
    assert test.images.shape == (20, 32, 32, 3) and data.fine_names == cifar10.FINE_NAMES
    np.testing.assert_array_equal(test.coarse, test.fine)
    # Batches concatenated in order, rows CHW -> HWC: pixel (h, w, c) of train image i of batch b.
    images = cifar10.load(tmp_path / "c" / "cifar-10-batches-py")["train"][0]
    assert images.shape == (200, 32, 32, 3)
    assert images[45, 1, 2, 1] == (1024 + 32 + 2 + 1000 + 5) % 256
    assert cifar10.NORMALIZE == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert set(cifar10.SETTINGS) == {"closed_set"}


def test_cifar10_bad_and_missing(tmp_path):
    with pytest.raises(DataError) as err:
        cifar10.locate(str(tmp_path), allow_download=False)
    assert "datasets.cifar10.root" in str(err.value) and "data_batch_1" in str(err.value)
    folder = write_cifar10(tmp_path / "c", per_class_per_batch=1, n_test=1)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(reversed(cifar10.FINE_NAMES))}, f, protocol=2)
    with pytest.raises(DataError, match="label_names .* differ from the official CIFAR-10 classes"):
        cifar10.load(folder)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3 is not a readable CIFAR-10 pickle"):
        cifar10.read_pickle(folder / "data_batch_3", ("data",), "CIFAR-10")


def test_cifar10_download(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "src", per_class_per_batch=1, n_test=1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    payload = buf.getvalue()

    def fake_urlretrieve(url, target):
        assert url == cifar10.URL
        with open(target, "wb") as f:
            f.write(payload)

    monkeypatch.setattr("urllib.request.urlretrieve", fake_urlretrieve)
    with pytest.raises(DataError, match="md5"):
        cifar10.locate(None, download_dir=str(tmp_path / "dl"))
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(payload).hexdigest())
    folder = cifar10.locate(None, download_dir=str(tmp_path / "dl"))
    assert folder == tmp_path / "dl" / "cifar-10-batches-py" and len(cifar10.load(folder)["test"][1]) == 10


# --------------------------------------------------------------------------- config


def test_config_val_classes_reaches_prepare():
    cfg = fgconfig.validate({
        "benchmark": {"cub200": {"open_set": ["triplet"]}, "fashion_mnist": {"closed_set": ["triplet"]}},
        "datasets": {"cub200": {"val_classes": 20}},
        "protocols": {"retrieval": {}},
    })
    assert fgconfig.prepare_spec(cfg, "cub200")["val_classes"] == 20
    assert fgconfig.prepare_spec(cfg, "fashion_mnist")["val_classes"] is None  # the dataset's default: none
    spec = fgconfig.train_spec(cfg, "cub200", "open_set", "triplet", 0)
    assert spec["setting_def"]["train_classes"] is None and spec["image_size"] == 224
    assert spec["train"]["augment"] == "random_resized_crop_flip"


def test_fashion_mnist_refuses_held_out_classes(fashion_dir, tmp_path):
    with pytest.raises(ConfigError, match="datasets.fashion_mnist.val_classes.*open_set.*val_fraction"):
        prepare("fashion_mnist", {**SPEC, "val_classes": 2, "root": str(fashion_dir)}, tmp_path / "d.npz")
    prepare("fashion_mnist", {**SPEC, "val_classes": 0, "root": str(fashion_dir)}, tmp_path / "d.npz")
    assert len(load_prepared(tmp_path / "d.npz").splits["val"]) == 30  # 0: val_fraction of the images
