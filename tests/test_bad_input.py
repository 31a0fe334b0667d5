"""Bad input through the real entry points (issue 11): config validation and `snakemake -n` for
config mistakes, the `fgbench` stages for damaged files. Each case: exit status 2, one line that
names the key or the path to fix, and no output file written."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, prepared_fashion, write_fashion
from fgbench import config as fgconfig
from fgbench.embed import embed_split
from fgbench.errors import ConfigError
from fgbench.train import train
from test_cli import SPEC as PREPARE_SPEC
from test_cli import assert_one_line_error, fgbench
from test_config import changed

# (case, config, what the one line must say)
CONFIG_CASES = [
    ("seeds_not_a_list", changed(seeds=1), "config key 'seeds' must be a list of non-negative integers"),
    ("train_not_a_mapping", changed(train=5), "config key 'train' must be a mapping"),
    ("dataset_as_a_list", changed(datasets={"fashion_mnist": ["root"]}),
     "config key 'datasets.fashion_mnist' must be a mapping of dataset settings"),
    ("dataset_mapped_to_a_list", changed(benchmark={"fashion_mnist": ["triplet"]}),
     "config key 'benchmark.fashion_mnist' must be a mapping of settings to lists of methods, got a list"),
    ("method_list_as_text", changed(benchmark={"fashion_mnist": {"open_set": "triplet"}}),
     "config key 'benchmark.fashion_mnist.open_set' must be a list of methods, e.g. [triplet, lsd], got the text 'triplet'"),
    ("empty_method_list", changed(benchmark={"fashion_mnist": {"open_set": []}}),
     "config key 'benchmark.fashion_mnist.open_set' lists no method"),
    ("unknown_dataset_key", changed(datasets__fashion_mnist__rooot="/data"),
     "unknown key(s) ['rooot'] in 'datasets.fashion_mnist'; valid keys: root,"),
    ("unknown_method_key", changed(methods__triplet__parms={"margin": 0.1}),
     "unknown key(s) ['parms'] in 'methods.triplet'; valid keys: params, train, embed_layer"),
    ("unknown_embed_key", changed(embed={"view": 3}), "unknown key(s) ['view'] in 'embed'"),
    ("parameter_of_wrong_type", changed(methods__triplet__params={"margin": "big"}),
     "config key 'methods.triplet.params.margin' must be of type float, got the text 'big'"),
    ("more_ways_than_classes", changed(protocols__fewshot_5way__n_way=20),
     "config key 'protocols.fewshot_5way.n_way' = 20 exceeds the 10 classes of the test split of 'fashion_mnist'"),
    ("intra_without_hierarchy", changed(benchmark={"mnist": {"closed_set": ["vmf"]}}, datasets={}),
     "'protocols.fewshot_intra' is an intra-class protocol, but 'mnist' has no class hierarchy"),
    ("test_cap_below_an_episode", changed(datasets__fashion_mnist__max_images_per_class={"test": 10}),
     "config key 'datasets.fashion_mnist.max_images_per_class.test' = 10 is below protocols.fewshot_5way's n_shot + n_query = 16"),
    ("verify_not_a_boolean", changed(datasets__fashion_mnist__verify="maybe"), "config key 'datasets.fashion_mnist.verify'"),
    ("unknown_backbone", changed(datasets__fashion_mnist__backbone={"name": "vgg"}),
     "unknown backbone 'vgg' (config key 'datasets.fashion_mnist.backbone.name'); valid backbones: small_cnn, resnet18,"),
    ("backbone_without_a_name", changed(datasets__fashion_mnist__backbone="small_cnn"),
     "config key 'datasets.fashion_mnist.backbone' must be a mapping with a name, e.g. {name: small_cnn}, got 'small_cnn'"),
]
SNAKEMAKE_CASES = ("seeds_not_a_list", "unknown_dataset_key", "parameter_of_wrong_type", "more_ways_than_classes",
                   "intra_without_hierarchy")


@pytest.mark.parametrize("case, cfg, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_mistakes_are_refused_naming_the_key(case, cfg, message):
    with pytest.raises(ConfigError) as info:
        fgconfig.validate(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_config_mistakes_stop_snakemake_before_any_job(tmp_path):
    """The same mistakes through `snakemake -n` (in parallel: each parses the workflow): exit 2,
    the one line on stderr, and no results/ folder."""
    procs = {}
    for case, cfg, message in CONFIG_CASES:
        if case in SNAKEMAKE_CASES:
            workdir = tmp_path / case
            workdir.mkdir()
            (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
            procs[case] = (message, workdir, subprocess.Popen(
                [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n", "--cores", "1"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for case, (message, workdir, proc) in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (case, out[-2000:], err[-2000:])
        assert f"fgbench: config error: {message}" in err, (case, err[-2000:])
        assert "Traceback" not in err and not (workdir / "results").exists(), case


def test_nested_command_line_values_are_read_as_numbers():
    """Snakemake hands `--config 'seeds=[0,1,2]' 'train={lr: 0.01}'` over as strings."""
    cfg = fgconfig.validate({**changed(), "seeds": ["0", "1", "2"], "train": {"lr": "0.01", "epochs": "3", "nesterov": "true"}})
    assert cfg["seeds"] == [0, 1, 2]
    assert (cfg["train"]["lr"], cfg["train"]["epochs"], cfg["train"]["nesterov"]) == (0.01, 3, True)
    with pytest.raises(ConfigError, match="'seeds' must list non-negative integers, got 'zero'"):
        fgconfig.validate({**changed(), "seeds": ["zero"]})


# --- damaged files through the `fgbench` stages ---------------------------------------------------


def truncated(path, to):
    to.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return to


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A prepared dataset, a trained model (one epoch) and its test embeddings."""
    folder = tmp_path_factory.mktemp("bad_input")
    data = prepared_fashion(folder, n_train=60, n_test=20)
    cfg = changed(train__epochs=1, train__device="cpu")
    resolved = fgconfig.validate(cfg)
    spec = fgconfig.train_spec(resolved, "fashion_mnist", "open_set", "triplet", 0)
    train(spec, data, folder / "model")
    embed_spec = fgconfig.embed_spec(resolved, "fashion_mnist")
    embed_split(folder / "model" / "model.pt", data, "test", embed_spec, folder / "test.npz", device="cpu")
    return {"folder": folder, "data": data, "model": folder / "model" / "model.pt", "embeddings": folder / "test.npz",
            "embed_spec": json.dumps(embed_spec), "train_spec": json.dumps(spec), "resolved": resolved}


def evaluate(run, embeddings, out, **protocol):
    spec = {**fgconfig.protocol_spec(run["resolved"], "fewshot_5way"), "episodes": 5, **protocol}
    info = {"dataset": "fashion_mnist", "setting": "open_set", "method": "triplet", "seed": 0, "config_hash": "x"}
    return fgbench("evaluate", "--spec", json.dumps(spec), "--run", json.dumps(info),
                   "--embeddings", str(embeddings), "--out", str(out))


def test_files_of_the_wrong_content_are_refused_at_prepare(tmp_path):
    """Item 4: the right names and format, not the official bytes (md5 checked for files found
    under root too); `verify: false` lets a modified copy through."""
    root = write_fashion(tmp_path / "copy", n_train=3, n_test=2)
    spec = {k: v for k, v in PREPARE_SPEC.items() if k != "verify"}
    out = tmp_path / "out" / "data.npz"
    proc = fgbench("prepare", "--spec", json.dumps({**spec, "root": str(root), "val_fraction": 0.5}), "--out", str(out))
    assert_one_line_error(proc, f"{root / 'train-images-idx3-ubyte.gz'} has md5", "expected f4a8712d7a061bf5bd6d2ca38dc4d50a",
                          "set datasets.fashion_mnist.verify: false")
    assert not out.exists()
    proc = fgbench("prepare", "--spec", json.dumps({**spec, "root": str(root), "val_fraction": 0.5, "verify": False}),
                   "--out", str(out))
    assert proc.returncode == 0 and out.exists(), proc.stderr


def test_damaged_prepared_data_stops_training(run, tmp_path):
    bad = truncated(run["data"], tmp_path / "data.npz")
    proc = fgbench("train", "--spec", run["train_spec"], "--data", str(bad), "--out-dir", str(tmp_path / "model"))
    assert_one_line_error(proc, f"prepared dataset {bad} is unreadable", "delete it and rerun")
    assert not (tmp_path / "model" / "model.pt").exists()


def test_damaged_model_stops_embedding(run, tmp_path):
    bad = truncated(run["model"], tmp_path / "model.pt")
    out = tmp_path / "test.npz"
    proc = fgbench("embed", "--spec", run["embed_spec"], "--model", str(bad), "--data", str(run["data"]),
                   "--device", "cpu", "--out", str(out))
    assert_one_line_error(proc, f"model file {bad} is unreadable", "delete it and rerun")
    assert not out.exists()


def test_a_model_with_non_finite_weights_writes_no_embeddings(run, tmp_path):
    """Item 2, where embeddings are written: the file and the layer are named."""
    saved = torch.load(run["model"], weights_only=False)
    saved["state_dict"] = {k: v.float() * float("nan") if v.is_floating_point() else v for k, v in saved["state_dict"].items()}
    bad, out = tmp_path / "model.pt", tmp_path / "test.npz"
    torch.save(saved, bad)
    proc = fgbench("embed", "--spec", run["embed_spec"], "--model", str(bad), "--data", str(run["data"]),
                   "--device", "cpu", "--out", str(out))
    assert_one_line_error(proc, f"layer 'head' of {bad} gives", "non-finite values (NaN or inf)")
    assert not out.exists()


def test_damaged_embeddings_stop_evaluation(run, tmp_path):
    bad, out = truncated(run["embeddings"], tmp_path / "test.npz"), tmp_path / "m.json"
    assert_one_line_error(evaluate(run, bad, out), f"{bad}: cannot read the embeddings file")
    assert not out.exists()


def test_non_finite_embeddings_stop_evaluation(run, tmp_path):
    """Item 2, where embeddings are read: a NaN would pass the cosine classifier at chance level."""
    with np.load(run["embeddings"]) as z:
        arrays = dict(z)
    arrays["features_head"][3, 0] = np.nan
    bad, out = tmp_path / "test.npz", tmp_path / "m.json"
    np.savez(bad, **arrays)
    assert_one_line_error(evaluate(run, bad, out, classifier="cosine_nn"), f"{bad}: layer 'head' holds 1 non-finite values")
    assert not out.exists()


def test_more_ways_than_the_test_classes_stop_evaluation(run, tmp_path):
    """Item 1 on the embeddings (datasets whose classes are known only once read): open_set
    tests on 5 classes, so 7 ways would silently be 5."""
    out = tmp_path / "m.json"
    assert_one_line_error(evaluate(run, run["embeddings"], out, n_way=7),
                          "config key 'protocols.fewshot_5way.n_way' = 7 exceeds the 5 test classes")
    assert not out.exists()


def test_too_few_test_images_for_an_episode_stop_evaluation(run, tmp_path):
    out = tmp_path / "m.json"
    assert_one_line_error(evaluate(run, run["embeddings"], out, n_way="all", n_query=50),
                          str(run["embeddings"]), "(n_shot + n_query)")
    assert not out.exists()


# --- the console and the lock ----------------------------------------------------------------------


def test_plain_snakemake_loads_the_default_profile_and_shows_the_failed_jobs_error(tmp_path):
    """Item 10: no --workflow-profile; the job's one line (a missing dataset) reaches the console."""
    cfg = changed(benchmark={"fashion_mnist": {"open_set": ["triplet"]}}, combinations=[])
    cfg["datasets"]["fashion_mnist"].update(root=str(tmp_path / "nowhere"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--cores", "1", "--until", "prepare"], capture_output=True, text=True, timeout=600)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Using workflow specific profile" in console and "profiles/default" in console
    assert f"fgbench: error: Fashion-MNIST not found in datasets.fashion_mnist.root = {tmp_path / 'nowhere'}" in console
    assert not (tmp_path / "results" / "data" / "fashion_mnist" / "data.npz").exists()


def test_unlock_lifts_a_stale_lock_but_not_a_live_one(tmp_path):
    """Item 11: `make run` calls `python -m fgbench.unlock` first."""
    from fgbench import unlock

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(changed()))
    (tmp_path / "Snakefile").symlink_to(REPO / "Snakefile")
    (tmp_path / "workflow").symlink_to(REPO / "workflow")
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("x")  # what a killed run leaves
    assert unlock.has_lock(tmp_path) and unlock.snakemake_processes(tmp_path) == []

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "snakemake"], cwd=tmp_path)
    fake = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 30"], cwd=tmp_path)
    try:  # a process whose command line runs snakemake, in this directory, holds the lock
        for _ in range(50):
            if unlock.snakemake_processes(tmp_path):
                break
            time.sleep(0.1)
        assert fake.pid in unlock.snakemake_processes(tmp_path)
        assert sleeper.pid not in unlock.snakemake_processes(tmp_path)  # mentions snakemake, does not run it
        assert unlock.main([str(tmp_path)]) == 0 and unlock.has_lock(tmp_path)
    finally:
        for proc in (sleeper, fake):
            proc.kill()
            proc.wait()
    assert unlock.main([str(tmp_path)]) == 0
    assert not unlock.has_lock(tmp_path)
