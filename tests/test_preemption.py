"""Preemption: a training run killed with SIGKILL at any point and started again resumes from its
last checkpoint and ends with exactly the weights, training log and metrics of an uninterrupted
run (CPU).

The killed runs are forked from the test process and SIGKILL themselves at a chosen point (a
step of an epoch, right after a checkpoint, halfway through writing one); the run that resumes and
the uninterrupted one run in the test process. Methods: ANCOR at every kill point (queues and a
key encoder), and a mid-epoch kill for each method with other training state: SCGM-G (E-step
pseudo-labels), STML (EMA teacher, nearest-neighbour batches), LSD (teacher snapshot) and vMF
(its data-dependent initial scale); and ANCOR with batch augmentation on the device (MoCo-v2's
colour part drawn per batch from (seed, epoch, step))."""

import io
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from PIL import Image

from conftest import REPO, prepared_fashion
from fgbench import config as fgconfig
from fgbench.data import SPLITS, write_store
from fgbench.data.images import ImageFiles
from fgbench.data.store import StoredImages
from fgbench.data.transforms import build_augment
from fgbench.evaluate.retrieval import nearest_neighbours, recall_at_k
from fgbench.train import loop

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

EPOCHS = 3
PARAMS = {  # small queues (they wrap within an epoch), E-steps at epochs 0 and 2
    "ancor": {"queue_size": 48},
    "scgm_g": {"n_iter_estep": 2},
    "stml": {"embedding_dim": 32, "g_dim": 32},
}
SETTINGS = {"ancor": "coarse_to_fine", "scgm_g": "coarse_to_fine", "stml": "open_set", "lsd": "open_set",
            "vmf": "closed_set"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_fashion(tmp_path_factory.mktemp("preemption"), n_train=16, n_test=8)


# variants of a method's run: extra train keys
VARIANTS = {"ancor+batch_augment": ("ancor", {"augment": "moco_v2", "batch_augment": True})}


def run_spec(method):
    method, train = VARIANTS.get(method, (method, {}))
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"].update(epochs=EPOCHS, device="cpu", batch_size=20 if method == "stml" else 32, **train)
    cfg["methods"][method]["train"] = {k: v for k, v in cfg["methods"][method].get("train", {}).items() if k != "batch_size"}
    cfg["methods"][method]["params"] = {**cfg["methods"][method].get("params", {}), **PARAMS.get(method, {})}
    return fgconfig.train_spec(fgconfig.validate(cfg), "fashion_mnist", SETTINGS[method], method, 0)


@pytest.fixture(scope="module")
def stored_data(data, tmp_path_factory):
    """The same prepared data with its images in an image store (fgbench.data.store), decoded
    once from PNG files: training reads them item by item, as from ImageNet's store."""
    folder = tmp_path_factory.mktemp("stored")
    with np.load(data) as z:
        arrays = dict(z)
    for split in SPLITS:
        names = [f"{split}/{i}.png" for i in range(len(arrays[f"{split}_fine"]))]
        (folder / split).mkdir()
        for name, image in zip(names, arrays.pop(f"{split}_images")):
            Image.fromarray(image).save(folder / name)
        arrays.update(write_store(ImageFiles(folder, names), folder / "data.npz", split, 32, threads=1))
    np.savez(folder / "data.npz", **arrays)
    assert isinstance(loop.load_prepared(folder / "data.npz").splits["train"].images, StoredImages)
    return folder / "data.npz"


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The uninterrupted run of each method (on ``prepared``, default the arrays), trained once per module."""
    done = {}

    def run(method, prepared=data):
        if (method, prepared) not in done:
            done[method, prepared] = tmp_path_factory.mktemp(f"full-{method.replace('+', '-')}")
            loop.train(run_spec(method), prepared, done[method, prepared])
        return done[method, prepared]

    return run


# --- killing ----------------------------------------------------------------------------------
def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class _DieAfter:
    """A loader that hands out ``steps`` batches, then kills the process (mid-epoch)."""

    def __init__(self, loader, steps):
        self.loader, self.steps = loader, steps

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.steps:
                _die()
            yield batch


def _train_and_die(spec, data, out, point):
    """In the forked child: train, SIGKILL at ``point`` (this process only is patched).

    ("step", e, s): when epoch e asks for its batch s (s steps of it trained, not saved);
    ("saved", k): right after the checkpoint of k completed epochs is in place;
    ("saving", k): with half of that checkpoint written to its temporary file."""
    kind, *where = point
    if kind == "step":
        epoch_to_die, steps = where
        train_epoch = loop._train_epoch

        def dying_epoch(run, step_module, loader, device, dtype, epoch):
            loader = _DieAfter(loader, steps) if epoch == epoch_to_die else loader
            return train_epoch(run, step_module, loader, device, dtype, epoch)

        loop._train_epoch = dying_epoch
    elif kind == "saved":
        save = loop._save

        def save_then_die(obj, path):
            save(obj, path)
            if path.name == loop.CHECKPOINT and obj["epoch"] == where[0]:
                _die()

        loop._save = save_then_die
    else:
        torch_save = torch.save

        def die_halfway(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("epoch") == where[0] and "optimizer" in obj:
                buffer = io.BytesIO()
                torch_save(obj, buffer)
                with open(f, "wb") as out:  # the temporary file atomic_path handed out
                    out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                _die()
            return torch_save(obj, f, *args, **kwargs)

        torch.save = die_halfway
    loop.train(spec, data, out)


def killed_run(spec, data, out, point):
    child = mp.get_context("fork").Process(target=_train_and_die, args=(spec, data, out, point))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL, f"the run was not killed at {point} (exit code {child.exitcode})"
    assert not (out / "model.pt").exists()


def checkpoint_epoch(out):
    return torch.load(out / loop.CHECKPOINT, weights_only=False)["epoch"]


# --- comparing --------------------------------------------------------------------------------
def embeddings_and_recall(path, data):
    """Embeddings of the test split by the saved model, and their Recall@1, 2, 4."""
    method, spec = loop.load_model(path)
    split = loop.load_prepared(data).splits["test"].with_classes(spec["setting_def"]["test_classes"])
    transform = build_augment(spec["eval_transform"], spec["image_size"])
    layer = spec["embed_layers"][0]
    features = loop.embed_images(method, split.images, [layer], "cpu", transform=transform)[layer]
    _, neighbours = nearest_neighbours(features, 4)
    return features, recall_at_k(split.fine, neighbours, ks=(1, 2, 4))


def assert_same_run(full, resumed, data):
    a, b = (torch.load(d / "model.pt", weights_only=False) for d in (full, resumed))
    assert a["best_epoch"] == b["best_epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    timing = ["seconds", "images_per_s", "data_wait"]  # wall-clock columns
    log_a, log_b = (pd.read_csv(d / "train_log.csv").drop(columns=timing) for d in (full, resumed))
    pd.testing.assert_frame_equal(log_a, log_b, check_exact=True)
    (features_a, recall_a), (features_b, recall_b) = (embeddings_and_recall(d / "model.pt", data) for d in (full, resumed))
    assert np.array_equal(features_a, features_b)
    assert recall_a == recall_b
    assert sorted(p.name for p in resumed.iterdir()) == ["config.yaml", "model.pt", "train_log.csv"]


def resume(spec, data, out, capsys):
    capsys.readouterr()
    loop.train(spec, data, out)
    return capsys.readouterr().out


# --- the tests --------------------------------------------------------------------------------
def test_killed_before_the_first_checkpoint_starts_over(data, tmp_path, uninterrupted, capsys):
    spec, out = run_spec("ancor"), tmp_path / "run"
    killed_run(spec, data, out, ("step", 0, 2))
    assert not (out / loop.CHECKPOINT).exists()
    assert "resuming" not in resume(spec, data, out, capsys)
    assert_same_run(uninterrupted("ancor"), out, data)


def test_killed_right_after_a_checkpoint_resumes_from_it(data, tmp_path, uninterrupted, capsys):
    spec, out = run_spec("ancor"), tmp_path / "run"
    killed_run(spec, data, out, ("saved", 1))
    assert checkpoint_epoch(out) == 1
    assert f"resuming from {out / loop.CHECKPOINT} after epoch 1" in resume(spec, data, out, capsys)
    assert_same_run(uninterrupted("ancor"), out, data)


def test_killed_after_the_last_checkpoint_only_writes_the_outputs(data, tmp_path, uninterrupted, capsys):
    spec, out = run_spec("ancor"), tmp_path / "run"
    killed_run(spec, data, out, ("saved", EPOCHS))
    output = resume(spec, data, out, capsys)
    assert f"resuming from {out / loop.CHECKPOINT} after epoch {EPOCHS}" in output
    assert not any(line.startswith("epoch ") for line in output.splitlines())  # nothing left to train
    assert_same_run(uninterrupted("ancor"), out, data)


def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(data, tmp_path, uninterrupted, capsys):
    spec, out = run_spec("ancor"), tmp_path / "run"
    killed_run(spec, data, out, ("saving", 2))
    assert checkpoint_epoch(out) == 1  # intact: the write went to a temporary file
    stale = list(out.glob(f".{loop.CHECKPOINT}.*"))
    assert len(stale) == 1 and 0 < stale[0].stat().st_size < (out / loop.CHECKPOINT).stat().st_size
    assert f"resuming from {out / loop.CHECKPOINT} after epoch 1" in resume(spec, data, out, capsys)
    assert_same_run(uninterrupted("ancor"), out, data)  # which also says the temporary file is gone


@pytest.mark.parametrize("method", ["ancor", "scgm_g", "stml", "lsd", "vmf", "ancor+batch_augment"])
def test_killed_mid_epoch_resumes_from_the_last_checkpoint(data, tmp_path, uninterrupted, capsys, method):
    """Epoch 1 dies after one step: the resumed run repeats it from the checkpoint of epoch 0
    (SCGM-G then keeps the pseudo-labels of epoch 0's E-step; LSD takes its teacher anew; STML
    rebuilds its batches from the restored teacher; vMF keeps the scale set at epoch 0)."""
    spec, out = run_spec(method), tmp_path / "run"
    killed_run(spec, data, out, ("step", 1, 1))
    assert checkpoint_epoch(out) == 1
    assert f"resuming from {out / loop.CHECKPOINT} after epoch 1" in resume(spec, data, out, capsys)
    assert_same_run(uninterrupted(method), out, data)


@pytest.mark.parametrize("method", ["ancor", "ancor+batch_augment"])
def test_killed_mid_epoch_with_an_image_store_resumes_exactly(stored_data, tmp_path, uninterrupted, capsys, method):
    """ANCOR (two views, queues) reading an image store item by item, with the whole augmentation
    in the workers or its colour part on the batch (the paper-scale GPU path): the resumed run
    repeats epoch 1 from its checkpoint and ends as the uninterrupted run on the same store."""
    spec, out = run_spec(method), tmp_path / "run"
    killed_run(spec, stored_data, out, ("step", 1, 1))
    assert checkpoint_epoch(out) == 1
    assert f"resuming from {out / loop.CHECKPOINT} after epoch 1" in resume(spec, stored_data, out, capsys)
    assert_same_run(uninterrupted(method, stored_data), out, stored_data)
