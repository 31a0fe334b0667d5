"""The image store (fgbench.data.store): decoded once by prepare, read back exactly, refused when
it does not match its image list, used by a tiny workflow on an ImageNet-layout folder."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from conftest import REPO
from fgbench import config as fgconfig
from fgbench.data import load_prepared, prepare
from fgbench.data.images import ImageFiles
from fgbench.data.store import HEADER_BYTES, build_store, open_store, resized_shape, StoredImages
from fgbench.data.transforms import build_augment, image_tensor
from fgbench.errors import ConfigError, DataError
from test_imagenet import BREEDS_DIR, SPEC, living17, needs_breeds, write_imagenet  # noqa: F401 (living17: a fixture)
from test_workflow import snakemake, write_config

# (height, width, PIL mode): shrunk landscape and portrait, one smaller than 256 (kept), one whose
# shorter side is already 256 (kept), a greyscale JPEG (stored as RGB).
SHAPES = [(375, 500, "RGB"), (500, 333, "RGB"), (200, 180, "RGB"), (256, 300, "RGB"), (300, 420, "L")]


@pytest.fixture
def photos(tmp_path):
    """JPEGs with smooth random content (bicubic-enlarged noise) of the SHAPES."""
    rng = np.random.default_rng(0)
    names = []
    for i, (h, w, mode) in enumerate(SHAPES):
        small = Image.fromarray((rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8))
        names.append(f"class{i % 2}/img{i}.jpg")
        (tmp_path / names[-1]).parent.mkdir(exist_ok=True)
        small.resize((w, h), Image.BICUBIC).convert(mode).save(tmp_path / names[-1], quality=90)
    return ImageFiles(tmp_path, names)


def built(files, tmp_path, short=256):
    meta = build_store(files, tmp_path / "s.u8", short)
    return open_store(tmp_path / "s.u8", meta["offsets"], meta["shapes"], str(meta["list_hash"])), meta


def test_round_trip_is_pil_decode_and_resize_exactly(photos, tmp_path):
    """Exact: the store is PIL's decode and antialiased bilinear resize of each file, written and
    read back as raw uint8 (no re-encoding)."""
    store, _ = built(photos, tmp_path)
    assert len(store) == len(SHAPES)
    for i, (h, w, _) in enumerate(SHAPES):
        with Image.open(photos.path(i)) as img:
            rgb = img.convert("RGB")
        # torchvision's Resize(256) gives the stored shape (it resizes nothing when the short side is 256)
        expected_hw = tuple(TF.resize(torch.zeros(3, h, w), 256).shape[1:]) if min(h, w) > 256 else (h, w)
        assert resized_shape(h, w, 256) == expected_hw
        expected = np.asarray(rgb if expected_hw == (h, w) else rgb.resize(expected_hw[::-1], Image.BILINEAR))
        np.testing.assert_array_equal(store[i], expected)
        assert store[i].dtype == np.uint8 and store[i].flags.writeable


def test_eval_transform_on_the_store_is_within_one_grey_level_of_the_file_path(photos, tmp_path):
    """Within 1 grey level, not exact: the file path resizes the float image with torch's
    antialiased bilinear filter, the store holds PIL's uint8-rounded resize; Resize(256) then finds
    the stored size and resizes nothing, and the centre crop cuts the same pixels."""
    store, _ = built(photos, tmp_path)
    transform = build_augment("resize_center_crop", 224)
    for i in range(len(SHAPES)):
        a, b = transform(image_tensor(store[i])), transform(image_tensor(photos[i]))
        assert a.shape == b.shape == (3, 224, 224)
        assert (a - b).abs().max().item() * 255 <= 1.0 + 1e-4


def test_subsets_pickling_and_dataloader_workers(photos, tmp_path):
    store, _ = built(photos, tmp_path)
    sub = store[np.array([4, 1])]
    assert isinstance(sub, StoredImages) and len(sub) == 2
    np.testing.assert_array_equal(sub[0], store[4])
    mask = store[np.array([True, False, True, False, True])]
    assert [x.shape for x in mask] == [store[0].shape, store[2].shape, store[4].shape]
    store[0]  # mapped here; a pickle carries the file name, not the mapping
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(sub))[1], store[1])
    worker_read = list(DataLoader(sub, batch_size=None, num_workers=1))
    np.testing.assert_array_equal(worker_read[0].numpy(), store[4])


def test_a_partial_or_foreign_store_is_refused(photos, tmp_path):
    _, meta = built(photos, tmp_path)
    args = (meta["offsets"], meta["shapes"], str(meta["list_hash"]))
    path = tmp_path / "s.u8"
    full = path.read_bytes()
    path.write_bytes(full[:-100])  # a partial copy
    with pytest.raises(DataError, match=rf"image store {path} holds {len(full) - 100} bytes but its image list "
                                        rf"\(5 images\) needs {len(full)}: a partial or foreign prepare; delete"):
        open_store(path, *args)
    other = full[:HEADER_BYTES - 65] + b"0" * 64 + full[HEADER_BYTES - 1 :]  # same size, another list's checksum
    path.write_bytes(other)
    with pytest.raises(DataError, match="was built for another image list"):
        open_store(path, *args)
    path.unlink()
    with pytest.raises(DataError, match=f"image store {path} is missing"):
        open_store(path, *args)


def test_a_corrupt_jpeg_is_named_while_building_and_nothing_is_left(photos, tmp_path):
    bad = photos.path(3)
    bad.write_bytes(bad.read_bytes()[: 600])  # truncated: the header reads, the pixels do not
    with pytest.raises(DataError, match=rf"image {bad} cannot be decoded .*re-extract"):
        build_store(photos, tmp_path / "s.u8", 256)
    bad.write_bytes(b"not a JPEG" * 50)
    with pytest.raises(DataError, match=rf"image {bad} cannot be decoded"):
        build_store(photos, tmp_path / "s.u8", 256, threads=2)
    assert not list(tmp_path.glob("*s.u8*"))


def test_store_config_keys():
    def validate(benchmark, datasets):
        return fgconfig.validate({"benchmark": benchmark, "datasets": datasets, "protocols": {"retrieval": {}}})

    cub = {"cub200": {"open_set": ["triplet"]}}
    resolved = validate(cub, {})
    assert resolved["datasets"]["cub200"]["store"] == "files"
    assert "store" not in fgconfig.prepare_spec(resolved, "cub200")  # the file path's data hash is as before
    assert fgconfig.prepare_spec(validate(cub, {"cub200": {"store": "resized", "store_size": 288}}), "cub200")[
        "store_size"] == 288
    with pytest.raises(ConfigError, match=r"'datasets.cub200.store_size' must be null or an integer of at least "
                                          r"the crop size 224, got 200"):
        validate(cub, {"cub200": {"store": "resized", "store_size": 200}})
    with pytest.raises(ConfigError, match="datasets.cub200.store"):
        validate(cub, {"cub200": {"store": "jpeg"}})
    with pytest.raises(ConfigError, match="fashion_mnist is not read as image files"):
        validate({"fashion_mnist": {"closed_set": ["triplet"]}}, {"fashion_mnist": {"store": "resized"}})


@needs_breeds
def test_prepare_writes_a_store_per_split_and_refuses_a_damaged_one(living17, tmp_path):  # noqa: F811
    root = write_imagenet(tmp_path / "imagenet", living17, size=300)
    out = tmp_path / "data.npz"
    prepare("living17", {**SPEC, "root": str(root), "store": "resized"}, out, threads=2)
    data = load_prepared(out)
    for s, split in data.splits.items():
        assert isinstance(split.images, StoredImages) and (tmp_path / f"{s}_store.u8").is_file()
        assert split.images[0].shape == (256, 256, 3)
    with np.load(out) as z:  # the paths stay, for traceability: image 0 of train is the file it was made from
        source = ImageFiles(str(z["train_image_root"]), z["train_paths"])
    with Image.open(source.path(0)) as img:
        expected = np.asarray(img.convert("RGB").resize((256, 256), Image.BILINEAR))
    np.testing.assert_array_equal(data.splits["train"].images[0], expected)
    store = tmp_path / "train_store.u8"
    store.write_bytes(store.read_bytes()[:-1])
    with pytest.raises(DataError, match=rf"prepared dataset {out} is unreadable \(image store {store} holds"):
        load_prepared(out)


@needs_breeds
@pytest.mark.workflow
def test_tiny_workflow_reads_the_store(living17, tmp_path):  # noqa: F811
    """prepare builds the store once; train and embed read it (a missing store would stop them);
    training runs MoCo-v2's crop and flip in the workers and its colour part on the batch."""
    root = write_imagenet(tmp_path / "imagenet", living17, size=280)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["benchmark"] = {"living17": {"coarse_to_fine": ["supervised_coarse"]}}
    cfg["datasets"] = {"living17": {"root": str(root), "hierarchy_dir": str(BREEDS_DIR), "store": "resized",
                                    "val_fraction": 1 / 3, "backbone": {"name": "small_cnn"},
                                    "train": {"augment": "moco_v2", "batch_augment": True}}}
    cfg["train"]["epochs"] = 1
    cfg["embed"]["views"] = 2
    cfg["protocols"] = {"fewshot_5way": {"episodes": 20, "n_query": 1, "n_aug": 2}}
    cfg["report"] = {**cfg.get("report", {}), "tsne": False}
    cfg["combinations"] = []
    work = write_config(tmp_path / "work", cfg)
    metrics = "results/metrics/living17/coarse_to_fine/supervised_coarse/seed0/fewshot_5way.json"
    snakemake(work, metrics)  # prepare, train, embed (val and test), evaluate: what reads the store
    data = load_prepared(work / "results/data/living17/data.npz")
    assert all(isinstance(s.images, StoredImages) for s in data.splits.values())
    assert data.splits["test"].images[0].shape == (256, 256, 3)
    rows = json.loads((work / metrics).read_text())
    assert rows and all(0 <= r["value"] <= 1 for r in rows), rows
    log = pd.read_csv(work / "results/models/living17/coarse_to_fine/supervised_coarse/seed0/train_log.csv")
    assert (log["images_per_s"] > 0).all() and log["data_wait"].between(0, 1).all()
