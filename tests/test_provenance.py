"""Provenance (issue 11, item 3) and damaged checkpoints (item 7): a run never resumes from a
checkpoint of other data or other code, and a checkpoint it cannot read is set aside."""

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, write_fashion
from fgbench import config as fgconfig
from fgbench import provenance
from fgbench.data import load_prepared, prepare
from fgbench.train import loop, train

SPEC = {"val_fraction": 0.2, "split_seed": 0, "verify": False}  # synthetic files: not the official md5s


def run_spec(epochs=2):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"].update(epochs=epochs, device="cpu")
    return fgconfig.train_spec(fgconfig.validate(cfg), "fashion_mnist", "open_set", "triplet", 0)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return write_fashion(tmp_path_factory.mktemp("fashion"), n_train=40, n_test=20)


def prepared(folder, fashion, **changes):
    out = folder / "data.npz"
    prepare("fashion_mnist", {**SPEC, "root": str(fashion), **changes}, out)
    return out


def interrupted(spec, data, out_dir, monkeypatch):
    """Train every epoch, then die before the outputs: the checkpoint stays (as after a kill)."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(loop, "_write_outputs", killed)
        with pytest.raises(KeyboardInterrupt):
            train(spec, data, out_dir)
    assert (out_dir / loop.CHECKPOINT).exists()


def test_the_prepared_data_carries_a_content_hash(tmp_path, fashion):
    first = load_prepared(prepared(tmp_path / "a", fashion)).data_hash
    assert first == load_prepared(prepared(tmp_path / "b", fashion)).data_hash  # same files, same spec
    assert first != load_prepared(prepared(tmp_path / "c", fashion, split_seed=1)).data_hash
    capped = prepared(tmp_path / "d", fashion, max_images_per_class={"train": 10})
    assert first != load_prepared(capped).data_hash
    assert len(first) == 12


def test_a_checkpoint_of_other_data_is_not_resumed(tmp_path, fashion, monkeypatch, capsys):
    """The issue's case: an interrupted run, then a changed data section (split_seed), then the
    rerun. The checkpoint (same train spec) must not be resumed, and the model's provenance
    differs from the one trained on the first data."""
    spec = run_spec()
    old, new = prepared(tmp_path / "old", fashion), prepared(tmp_path / "new", fashion, split_seed=1)
    out = tmp_path / "run"
    interrupted(spec, old, out, monkeypatch)
    capsys.readouterr()

    train(spec, new, out)
    log = capsys.readouterr().out
    assert f"not resuming {out / loop.CHECKPOINT}: it was written for another train spec, prepared data" in log
    assert "resuming from" not in log.replace("not resuming", "")
    assert torch.load(out / "model.pt", weights_only=False)["provenance"] == \
        provenance.run_hash(fgconfig.spec_hash(spec), load_prepared(new).data_hash)

    interrupted(spec, old, tmp_path / "same", monkeypatch)  # the same data resumes, as before
    capsys.readouterr()
    train(spec, old, tmp_path / "same")
    assert f"resuming from {tmp_path / 'same' / loop.CHECKPOINT} after epoch 2" in capsys.readouterr().out


def test_metric_rows_hash_covers_the_embeddings_provenance():
    assert provenance.row_hash("abc", {"layers": np.array(["head"])}) == "abc"  # files without one
    a, b = {"provenance": np.str_("111")}, {"provenance": np.str_("222")}
    assert provenance.row_hash("abc", a) != provenance.row_hash("abc", b) != "abc"
    assert provenance.row_hash("abc", a, b) != provenance.row_hash("abc", b, a)


def test_the_code_version_follows_the_sources(tmp_path, monkeypatch):
    (tmp_path / "stage.py").write_text("x = 1\n")
    monkeypatch.setattr(provenance, "PACKAGE", tmp_path)
    before = provenance.code_version.__wrapped__()
    assert before.startswith(provenance.__version__ + "+")
    (tmp_path / "stage.py").write_text("x = 2\n")
    assert provenance.code_version.__wrapped__() != before


@pytest.mark.parametrize("damage", ["truncated", "not_a_checkpoint"])
def test_an_unreadable_checkpoint_is_set_aside_and_training_starts_over(tmp_path, fashion, monkeypatch, capsys, damage):
    spec, data, out = run_spec(), prepared(tmp_path, fashion), tmp_path / "run"
    interrupted(spec, data, out, monkeypatch)
    ckpt = out / loop.CHECKPOINT
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    else:
        torch.save({"epoch": 1}, ckpt)
    capsys.readouterr()

    train(spec, data, out)
    log = capsys.readouterr().out
    assert f"{ckpt} is unreadable" in log and "set aside as checkpoint.pt.unreadable, training starts over" in log
    assert (out / "checkpoint.pt.unreadable").exists() and (out / "model.pt").exists()
    assert not ckpt.exists()
