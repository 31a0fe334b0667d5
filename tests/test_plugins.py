"""Plug-ins (fgbench.plugins): entry points extend the method, dataset and backbone registries;
examples/plugin installs offline and runs in a workflow beside built-in methods."""

import os
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import yaml

from conftest import REPO, write_fashion
from fgbench import plugins
from fgbench.config import prepare_spec, validate
from fgbench.data import DATASETS, get_dataset, load_prepared, prepare
from fgbench.errors import ConfigError, PluginError
from fgbench.evaluate.units import load_units
from fgbench.methods import base, get_method_class, list_methods
from fgbench.models import BACKBONES, get_backbone
from test_workflow import snakemake, tiny_config, write_config


@pytest.fixture
def registries():
    """The registries as they are, restored afterwards; plug-ins load afresh in the test."""
    saved = [(registry, dict(registry)) for registry in (base._REGISTRY, DATASETS, BACKBONES)]
    plugins.forget()
    yield
    for registry, content in saved:
        registry.clear()
        registry.update(content)
    plugins.forget()


def fake_distribution(folder, dist: str, entry_points: dict, modules: dict | None = None):
    """An installed distribution as pip leaves one: ``<dist>-1.0.dist-info`` with METADATA and
    entry_points.txt ({group: {name: "module:attr"}}), plus module files {name: source}."""
    info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in names.items())
        for group, names in entry_points.items()))
    for name, source in (modules or {}).items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return folder


def test_a_name_taken_by_a_built_in_names_both_distributions(tmp_path, monkeypatch, registries):
    # refused from the metadata alone: the module does not even exist
    monkeypatch.syspath_prepend(fake_distribution(tmp_path, "my-triplet", {plugins.METHODS: {"triplet": "absent:X"}}))
    message = ("plug-in method 'triplet = absent:X' (group fgbench.methods, distribution my-triplet 1.0) registers "
               "the name 'triplet', which the method of fgbench (a built-in) already has")
    with pytest.raises(PluginError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_method_class("triplet")
    with pytest.raises(PluginError, match="my-triplet 1.0"):  # again, not a half-loaded registry
        list_methods()


def test_two_plugins_with_one_name_are_both_named(tmp_path, monkeypatch, registries):
    for dist in ("first-nets", "second-nets"):
        monkeypatch.syspath_prepend(fake_distribution(tmp_path / dist, dist, {plugins.BACKBONES: {"mynet": "absent:build"}}))
    with pytest.raises(PluginError) as error:
        get_backbone("small_cnn")
    assert "register the same name 'mynet'" in str(error.value)
    assert "distribution first-nets 1.0" in str(error.value) and "distribution second-nets 1.0" in str(error.value)


def test_a_plugin_that_fails_to_import_names_its_entry_point(tmp_path, monkeypatch, registries):
    monkeypatch.syspath_prepend(fake_distribution(
        tmp_path, "broken-loss", {plugins.METHODS: {"broken": "broken_loss_mod:Loss"}},
        {"broken_loss_mod": "import no_such_dependency\n"}))
    with pytest.raises(PluginError, match=r"plug-in method 'broken = broken_loss_mod:Loss' \(group fgbench.methods, "
                                          r"distribution broken-loss 1.0\) cannot be loaded: ModuleNotFoundError: "
                                          r"No module named 'no_such_dependency'"):
        list_methods()


def test_a_plugin_of_the_wrong_kind_is_refused(tmp_path, monkeypatch, registries):
    monkeypatch.syspath_prepend(fake_distribution(tmp_path, "odd", {plugins.METHODS: {"odd": "json:dumps"},
                                                                     plugins.DATASETS: {"odd_data": "json"}}))
    with pytest.raises(PluginError, match="'odd = json:dumps'.* is <function dumps .*>, not a subclass of fgbench.methods.Method"):
        get_method_class("triplet")
    with pytest.raises(PluginError, match="'odd_data = json'.* lacks SETTINGS, IMAGE_SIZE, NORMALIZE, TRANSFORMS, read"):
        get_dataset("fashion_mnist")


TINY_DATASET = """
    import numpy as np
    from fgbench.data import fashion_mnist

    SETTINGS = {"open_set": {"train_label": "fine", "train_classes": [0, 1], "test_classes": [2, 3]}}
    IMAGE_SIZE, NORMALIZE, TRANSFORMS = 28, None, fashion_mnist.TRANSFORMS

    def read(cfg):
        rng = np.random.default_rng(0)
        split = lambda n: (rng.integers(0, 255, (4 * n, 28, 28), dtype=np.uint8), np.repeat(np.arange(4), n))
        return {"train": split(10), "test": split(5), "fine_to_coarse": [0, 0, 1, 1],
                "fine_names": list("abcd"), "coarse_names": ["x", "y"]}
"""
TINY_BACKBONE = """
    from torch import nn

    def build(*, in_channels=1, width=8):
        net = nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        net.out_dim = width
        return net
"""


def test_plugin_datasets_and_backbones_pass_config_validation_and_build(tmp_path, monkeypatch, registries):
    monkeypatch.syspath_prepend(fake_distribution(
        tmp_path, "tiny-things", {plugins.DATASETS: {"tiny_data": "tiny_data_mod"}, plugins.BACKBONES: {"tiny_net": "tiny_net_mod:build"}},
        {"tiny_data_mod": TINY_DATASET, "tiny_net_mod": TINY_BACKBONE}))
    cfg = {"benchmark": {"tiny_data": {"open_set": ["triplet"]}}, "protocols": {"retrieval": {}},
           "datasets": {"tiny_data": {"backbone": {"name": "tiny_net", "width": 4}}}}
    resolved = validate(cfg)
    assert resolved["datasets"]["tiny_data"]["view_augment"] == "crop_flip"  # the plug-in's TRANSFORMS
    assert get_backbone("tiny_net", width=4).out_dim == 4
    prepare("tiny_data", prepare_spec(resolved, "tiny_data"), tmp_path / "data.npz")  # what `fgbench prepare` runs
    data = load_prepared(tmp_path / "data.npz")
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [36, 4, 20] and data.coarse_names == ["x", "y"]
    with pytest.raises(ConfigError, match=r"unknown backbone 'tiny_nett' \(config key 'datasets.tiny_data.backbone.name'\); "
                                          "valid backbones: small_cnn, .*, tiny_net"):
        validate({**cfg, "datasets": {"tiny_data": {"backbone": {"name": "tiny_nett"}}}})


# --- examples/plugin: installed offline, checked, run in a workflow ------------------------------


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """examples/plugin installed as its README says, into a folder of its own (a copy is built,
    so the build leaves nothing in the repository); no network."""
    source = shutil.copytree(REPO / "examples/plugin", tmp_path_factory.mktemp("source") / "plugin")
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                    "--no-index", "--target", str(target), str(source)], check=True)
    return target


def test_the_example_plugins_own_tests_pass_once_installed(installed_example):
    """Its README's `python -m pytest examples/plugin/tests`: the contract checks
    (fgbench.testing.check_method) and the loss against CosFace's formula."""
    path = os.pathsep.join([str(installed_example), str(REPO / "pkg")])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "examples/plugin/tests")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_the_example_plugins_params_are_validated_like_built_in_ones(installed_example, monkeypatch, registries):
    monkeypatch.syspath_prepend(installed_example)
    cosface = get_method_class("cosface")
    assert cosface.name == "cosface" and "cosface" in list_methods() and cosface.__module__ == "fgbench_cosface"
    cfg = {"benchmark": {"fashion_mnist": {"open_set": ["cosface", "triplet"]}}, "protocols": {"retrieval": {}}}
    assert validate({**cfg, "methods": {"cosface": {"params": {"margin": 0.2}}}})["methods"]["cosface"]["embed_layer"] == ["head"]
    with pytest.raises(ConfigError, match="config key 'methods.cosface.params.margin' must be of type float, got the text 'big'"):
        validate({**cfg, "methods": {"cosface": {"params": {"margin": "big"}}}})
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['margn'\] in 'methods.cosface.params'; "
                                          "valid: embedding_dim, margin, scale"):
        validate({**cfg, "methods": {"cosface": {"params": {"margn": 0.2}}}})


@pytest.mark.workflow
def test_the_example_plugin_runs_in_a_workflow_beside_a_built_in_method(installed_example, tmp_path, monkeypatch):
    """pip install examples/plugin, and `methods: {cosface: ...}` is a method like any other: trained,
    embedded, evaluated on the same episodes and in the summary table."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(installed_example), str(REPO / "pkg")]))  # Snakemake and every fgbench job see it
    fashion = write_fashion(tmp_path / "fashion", n_train=30, n_test=20)
    cfg = tiny_config(fashion, combinations=[], benchmark={"fashion_mnist": {"open_set": ["triplet", "cosface"]}})
    cfg["datasets"]["fashion_mnist"]["verify"] = False  # synthetic files
    cfg["methods"]["cosface"] = {"params": {"margin": 0.2, "scale": 16.0}, "embed_layer": ["head", "backbone"]}
    cfg["protocols"] = {"fewshot_5way": cfg["protocols"]["fewshot_5way"]}
    snakemake(write_config(tmp_path / "run", cfg), "results/tables/summary.csv")
    summary = pd.read_csv(tmp_path / "run/results/tables/summary.csv")
    cosface = summary.query("method == 'cosface'")
    assert set(summary["method"]) == {"triplet", "cosface"}
    assert set(cosface["layer"]) == {"head", "backbone"} and set(cosface["protocol"]) == {"fewshot_5way"}
    assert cosface["mean"].between(0, 1).all() and (cosface["setting"] == "open_set").all()
    # scored on the built-in method's episodes
    metrics = tmp_path / "run/results/metrics/fashion_mnist/open_set"
    hashes = {m: load_units(metrics / f"{m}/seed0/fewshot_5way.npz")["draws_hash"] for m in ("cosface", "triplet")}
    assert hashes["cosface"] == hashes["triplet"]


def test_a_colliding_plugin_stops_the_workflow_before_any_job(tmp_path, monkeypatch):
    site = fake_distribution(tmp_path / "site", "my-triplet", {plugins.METHODS: {"triplet": "absent:X"}})
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(REPO / "pkg")]))
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    proc = snakemake(write_config(tmp_path / "run", cfg), "-n", check=False)
    assert proc.returncode != 0
    assert ("fgbench: config error: plug-in method 'triplet = absent:X' (group fgbench.methods, distribution "
            "my-triplet 1.0) registers the name 'triplet', which the method of fgbench (a built-in) already has") in proc.stderr
    assert not (tmp_path / "run/results").exists()
