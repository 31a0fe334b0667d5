"""The training loop: resume after SIGKILL, NaN losses, model selection on validation."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, prepared_fashion
from fgbench import config as fgconfig
from fgbench.errors import TrainingError
from fgbench.methods.metric_learning import Triplet
from fgbench.train import train


def run_spec(epochs=3, **train):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"].update(epochs=epochs, device="cpu", **train)
    return fgconfig.train_spec(fgconfig.validate(cfg), "fashion_mnist", "open_set", "triplet", 0)


@pytest.fixture
def data(tmp_path):
    return prepared_fashion(tmp_path, n_train=120, n_test=10)


def weights(path):
    return torch.load(path, weights_only=False)["state_dict"]


def test_killed_run_resumes_to_the_same_weights(data, tmp_path):
    spec = json.dumps(run_spec(epochs=5))
    command = [sys.executable, "-m", "fgbench.cli", "train", "--spec", spec, "--data", str(data)]
    subprocess.run([*command, "--out-dir", str(tmp_path / "full")], check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--out-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while not (out / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "the run finished before it could be killed"
    killed_after = torch.load(out / "checkpoint.pt", weights_only=False)["epoch"]
    assert 1 <= killed_after < 5

    resumed = subprocess.run([*command, "--out-dir", str(out)], check=True, capture_output=True, text=True)
    assert f"resuming from {out / 'checkpoint.pt'} after epoch {killed_after}" in resumed.stdout
    full, again = weights(tmp_path / "full" / "model.pt"), weights(out / "model.pt")
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key
    assert not (out / "checkpoint.pt").exists()
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == [0, 1, 2, 3, 4]


def test_best_epoch_is_chosen_on_validation(data, tmp_path):
    train(run_spec(epochs=3), data, tmp_path)
    log = pd.read_csv(tmp_path / "train_log.csv")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["best_epoch"] == int(log["val_recall@1"].idxmax())
    assert torch.load(tmp_path / "model.pt", weights_only=False)["best_epoch"] == saved["best_epoch"]


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(data, tmp_path, monkeypatch):
    original = Triplet.training_step
    calls = {"n": 0}

    def nan_in_second_epoch(self, batch):
        calls["n"] += 1
        loss, logs = original(self, batch)
        return (loss * float("nan"), logs) if calls["n"] > steps_per_epoch else (loss, logs)

    steps_per_epoch = 480 // 112  # open_set: 5 classes x 96 training images, batches of 112
    monkeypatch.setattr(Triplet, "training_step", nan_in_second_epoch)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 0; the checkpoint of the last completed epoch \(0\) is kept"):
        train(run_spec(epochs=3), data, tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "model.pt").exists()


def test_label_noise_touches_the_training_labels_only(data, tmp_path, monkeypatch):
    """The noisy labels are what the batches carry; validation keeps the clean labels."""
    from fgbench.train import loop

    seen = {}
    original_labels, original_score = loop.training_labels, loop._validation_score

    def record_batches(self, batch):
        seen.setdefault("train", []).append((batch["index"].clone(), batch["labels"].clone()))
        return original(self, batch)

    def record_score(method, spec, val, device):
        seen["val"] = loop.training_labels(spec, val)[1]
        return original_score(method, spec, val, device)

    original = Triplet.training_step
    monkeypatch.setattr(Triplet, "training_step", record_batches)
    monkeypatch.setattr(loop, "_validation_score", record_score)
    spec = run_spec(epochs=1, label_noise=0.4, sampler="random")
    train(spec, data, tmp_path)
    split = loop.load_prepared(data).splits["train"].with_classes(spec["setting_def"]["train_classes"])
    clean = original_labels(spec, split)[1].numpy()
    noisy = loop.symmetric_label_noise(clean, 0.4, spec["seed"])
    assert 0.3 < (noisy != clean).mean() < 0.5
    index, labels = (torch.cat(parts).numpy() for parts in zip(*seen["train"]))
    assert np.array_equal(labels, noisy[index])  # each image carries its noisy label
    assert len(index) == len(clean) // 112 * 112
    assert torch.equal(seen["val"], original_labels(spec, loop.load_prepared(data).splits["val"].with_classes([0, 1, 2, 3, 4]))[1])


def test_bn_group_size_changes_training_only_above_the_group_size(data, tmp_path):
    """train.bn_group_size: a group no smaller than the batch (112) trains exactly as without it
    (the CPU default run stays the same); groups of 16 change the weights, and model.pt still
    loads into plain BatchNorm."""
    from fgbench.train.loop import load_model

    for name, group in (("plain", None), ("one_group", 112), ("groups", 16)):
        train(run_spec(epochs=1, **({"bn_group_size": group} if group else {})), data, tmp_path / name)
    plain, same, grouped = (weights(tmp_path / n / "model.pt") for n in ("plain", "one_group", "groups"))
    assert all(torch.equal(plain[k], same[k]) for k in plain)
    assert not torch.equal(plain["backbone.features.1.running_mean"], grouped["backbone.features.1.running_mean"])
    method, _ = load_model(tmp_path / "groups" / "model.pt")
    assert type(method.backbone.features[1]) is torch.nn.BatchNorm2d


def test_throughput_columns_and_the_data_waiting_hint(data, tmp_path, monkeypatch, capsys):
    """images_per_s and data_wait per epoch: a loader that sleeps 1 s a batch waits most of the
    step time, the logged rate is bounded by the images it handed out and the time it slept, and
    the run says once what to change."""
    from fgbench.data.transforms import ImageDataset

    fetched, fetch = [], ImageDataset.__getitems__

    def slow_fetch(self, indices):
        time.sleep(1.0)
        fetched.append(len(indices))
        return fetch(self, indices)

    monkeypatch.setattr(ImageDataset, "__getitems__", slow_fetch)
    train(run_spec(epochs=1), data, tmp_path)
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert list(log.columns[-3:]) == ["seconds", "images_per_s", "data_wait"]
    rate, wait = log.loc[0, "images_per_s"], log.loc[0, "data_wait"]
    assert sum(fetched) / rate <= log.loc[0, "seconds"]  # the epoch's seconds include validation
    train_seconds = sum(fetched) / rate
    assert train_seconds >= 1.0 * len(fetched)  # the epoch lasted at least the sleeps
    assert 1.0 * len(fetched) / train_seconds - 1e-3 <= wait <= 1  # and waited at least that long
    assert wait > 0.2
    hints = [line for line in capsys.readouterr().out.splitlines() if line.startswith("hint:")]
    assert hints == [f"hint: epoch 0 waited for data {wait:.0%} of its step time; feed it faster with more "
                     "DataLoader workers (train.num_workers: 0 now), the decoded-image store (datasets.<name>.store: "
                     "resized), train.batch_augment: true (colour augmentation on the training device)"]
