"""Bad input through the command line: one line, exit status 2, no partial output."""

import json
import subprocess
import sys

from conftest import idx_bytes, synthetic_fashion, write_fashion

SPEC = {"dataset": "fashion_mnist", "val_fraction": 0.1, "split_seed": 0, "verify": False}  # synthetic files


def fgbench(*args):
    return subprocess.run([sys.executable, "-m", "fgbench.cli", *args], capture_output=True, text=True)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fgbench: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_prepare_writes_atomically(tmp_path):
    root = write_fashion(tmp_path / "f", n_train=3, n_test=2)
    spec = {**SPEC, "root": str(root), "val_fraction": 0.5}
    proc = fgbench("prepare", "--spec", json.dumps(spec), "--out", str(tmp_path / "out/data.npz"))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["data.npz"]


def test_unwritable_output_folder(tmp_path):
    root = write_fashion(tmp_path / "f", n_train=3, n_test=2)
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    proc = fgbench("prepare", "--spec", json.dumps({**SPEC, "root": str(root)}), "--out", str(blocker / "data.npz"))
    assert_one_line_error(proc, f"output folder {blocker} is not writable")


def test_missing_dataset(tmp_path):
    out = tmp_path / "out/data.npz"
    proc = fgbench("prepare", "--spec", json.dumps({**SPEC, "root": str(tmp_path / "nowhere")}), "--out", str(out))
    assert_one_line_error(proc, "Fashion-MNIST not found in datasets.fashion_mnist.root")
    assert not out.exists()


def test_truncated_idx_leaves_no_output(tmp_path):
    root = write_fashion(tmp_path / "f", n_train=3, n_test=2, gz=False)
    images, _ = synthetic_fashion(3, seed=0)
    (root / "train-images-idx3-ubyte").write_bytes(idx_bytes(images)[:1000])
    out = tmp_path / "out/data.npz"
    proc = fgbench("prepare", "--spec", json.dumps({**SPEC, "root": str(root)}), "--out", str(out))
    assert_one_line_error(proc, "train-images-idx3-ubyte is truncated")
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_spec_json(tmp_path):
    proc = fgbench("prepare", "--spec", "{not json", "--out", str(tmp_path / "x.npz"))
    assert_one_line_error(proc, "--spec is not valid JSON")


def test_validation_split_too_small(tmp_path):
    root = write_fashion(tmp_path / "f", n_train=3, n_test=2)
    proc = fgbench("prepare", "--spec", json.dumps({**SPEC, "root": str(root)}), "--out", str(tmp_path / "d.npz"))
    assert_one_line_error(proc, "datasets.fashion_mnist.val_fraction = 0.1 gives no stratified split")


def test_malformed_metrics_file(tmp_path):
    bad = tmp_path / "retrieval.json"
    bad.write_text('[{"dataset": "fashion_mnist"}]')
    proc = fgbench("aggregate", "--csv", str(tmp_path / "s.csv"), "--markdown", str(tmp_path / "s.md"), str(bad))
    assert_one_line_error(proc, f"{bad}: row 0 lacks column(s)")
    assert not (tmp_path / "s.csv").exists()
