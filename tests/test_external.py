"""External models (fgbench.external, fgbench.models.external): torchvision weights files,
a user's module:function, released checkpoints, precomputed embeddings; their bad input."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import prepared_fashion
from fgbench.cli import main
from fgbench.config import model_spec, validate
from fgbench.data import load_prepared
from fgbench.data.transforms import build_augment, to_tensor
from fgbench.embed import view_seed
from fgbench.errors import ConfigError, DataError
from fgbench.external import embed_model, evaluation_split

SMALL = {"size": 32, "resize": 32}  # a 32-pixel ResNet input: fast on a CPU


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_fashion(tmp_path_factory.mktemp("ext"), n_train=12, n_test=8)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def config(models, **changes):
    cfg = {"benchmark": {"fashion_mnist": {"coarse_to_fine": ["supervised_coarse"]}},
           "protocols": {"fewshot_5way": {"episodes": 5, "n_aug": 2}}, "embed": {"views": 2}, "models": models}
    return validate({**cfg, **changes})


def torchvision_entry(path, **extra):
    return {"source": "torchvision", "name": "resnet18", "weights_file": str(path), "transform": SMALL, **extra}


def embed(cfg, data, tmp_path, model="m"):
    out = tmp_path / "test.npz"
    embed_model(model_spec(cfg, "fashion_mnist", "coarse_to_fine", model), data, out, device="cpu")
    return dict(np.load(out))


def reference_resnet(path):
    """torchvision's ResNet-18 with the saved weights, classifier removed: its pooled features."""
    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(path))
    net.fc = nn.Identity()
    return net.eval()


def imagenet_input(x):
    """What the torchvision weights' transform does to a grey batch at 32 pixels (torchvision v2)."""
    from torchvision.transforms import v2

    x = x.expand(-1, 3, -1, -1)
    x = v2.Resize(32, antialias=True)(x)
    return v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])(x)


def test_torchvision_weights_file_gives_the_network_features_and_the_benchmark_views(data, resnet_file, tmp_path):
    cfg = config({"m": torchvision_entry(resnet_file, layers=["pooled", "layer4"])})
    arrays = embed(cfg, data, tmp_path)
    images, index = evaluation_split(data, "fashion_mnist", "coarse_to_fine")
    net = reference_resnet(resnet_file)
    with torch.no_grad():
        expected = net(imagenet_input(to_tensor(images[:]))).numpy()
    np.testing.assert_allclose(arrays["features_pooled"], expected, atol=1e-4)
    # layer4's output averaged over space is the pooled feature of ResNet (avgpool follows it)
    np.testing.assert_allclose(arrays["features_layer4"], expected, atol=1e-4)
    np.testing.assert_array_equal(arrays["index"], index)
    # support view j of image i: the dataset's view_augment under view_seed(0, j, index), as embed.py makes it
    augment = build_augment(cfg["datasets"]["fashion_mnist"]["view_augment"], 28)
    view1 = augment(to_tensor(images[:]), seeds=[view_seed(0, 1, i) for i in index])
    with torch.no_grad():
        np.testing.assert_allclose(arrays["aug_features_pooled"][:, 1], net(imagenet_input(view1)).numpy(), atol=1e-4)
    assert arrays["aug_features_pooled"].shape == (len(index), 2, 512)


def test_weights_file_with_other_keys_names_them_by_prefix(data, resnet_file, tmp_path):
    state = torch.load(resnet_file)
    broken = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, broken)
    cfg = config({"m": torchvision_entry(broken)})
    with pytest.raises(ConfigError) as e:
        embed(cfg, data, tmp_path)
    text = str(e.value)
    assert "models.m.weights_file" in text and "missing 120 key(s)" in text and "unexpected 122 key(s): module (122)" in text
    assert "Expected layout: conv1 (1), bn1 (5), layer1 (" in text and "prefix 'module.'" in text
    assert not (tmp_path / "test.npz").exists()
    # a truncated network: missing keys grouped by prefix
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4")}, broken)
    with pytest.raises(ConfigError, match=r"missing 30 key\(s\): layer4 \(30\)"):
        embed(config({"m": torchvision_entry(broken)}), data, tmp_path)


def experiment(tmp_path, data):
    """A tiny experiment config for --configfile: the synthetic files, few episodes."""
    import yaml

    cfg = {"datasets": {"fashion_mnist": {"root": str(data.parent / "fashion"), "verify": False, "val_fraction": 0.2}},
           "protocols": {"fewshot_5way": {"episodes": 5, "n_query": 3}}}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "experiment.yaml")


def test_evaluate_model_exits_2_and_writes_nothing_on_a_bad_weights_file(data, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(3)
    torch.save(state, bad)
    status = main(["evaluate-model", "--torchvision", "resnet18", "--weights-file", str(bad), "--dataset",
                   "fashion_mnist", "--configfile", experiment(tmp_path, data), "--workdir", str(tmp_path / "out"),
                   "--protocol", "fewshot_5way"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "1 shape mismatch(es): conv1.weight (3,) (expected (64, 3, 7, 7))" in err
    assert not list((tmp_path / "out").glob("embeddings/**/*.npz")) and not (tmp_path / "out/summary.csv").exists()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_encoders.py").write_text(
        "import torch\n"
        "def tiny(dim=4):\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, dim))\n"
        "def mean_pixels():\n"
        "    return lambda images: images.mean(dim=(2, 3)).repeat(1, 3).numpy()\n"
        "def number():\n"
        "    return 3\n"
        "def pair():\n"
        "    return lambda images: (images, images)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_encoders"


def test_callable_module_and_encode_function(data, tmp_path, user_module):
    arrays = embed(config({"m": {"source": "callable", "function": f"{user_module}:tiny", "params": {"dim": 4}}}), data, tmp_path)
    images, _ = evaluation_split(data, "fashion_mnist", "coarse_to_fine")
    torch.manual_seed(0)
    linear = nn.Linear(784, 4)
    with torch.no_grad():
        np.testing.assert_allclose(arrays["features_pooled"], linear(to_tensor(images[:]).flatten(1)).numpy(), atol=1e-5)
    arrays = embed(config({"m": {"source": "callable", "function": f"{user_module}:mean_pixels"}}), data, tmp_path)
    np.testing.assert_allclose(arrays["features_pooled"][:, 0], images[:].mean(axis=(1, 2)) / 255, atol=1e-5)


@pytest.mark.parametrize("function, message", [
    ("no_such_package.enc:f", "cannot import module 'no_such_package.enc'"),
    ("my_encoders:missing", "has no function 'missing'"),
    ("my_encoders:number", "returned int; expected an nn.Module or an encode function"),
    ("my_encoders:pair", "returned tuple; expected a tensor or array of features"),
])
def test_callable_that_cannot_be_used(data, tmp_path, user_module, function, message):
    with pytest.raises(ConfigError, match=message):
        embed(config({"m": {"source": "callable", "function": function}}), data, tmp_path)
    assert not (tmp_path / "test.npz").exists()


def write_embeddings(path, index, overrides=None, dim=3, views=2, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"index": index, "features_emb": rng.normal(size=(len(index), dim)).astype(np.float32),
              "aug_features_emb": rng.normal(size=(len(index), views, dim)).astype(np.float32)}
    arrays.update(overrides or {})
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_precomputed_embeddings_are_put_in_split_order(data, tmp_path):
    _, index = evaluation_split(data, "fashion_mnist", "coarse_to_fine")
    order = np.random.default_rng(1).permutation(len(index))
    written = write_embeddings(tmp_path / "emb.npz", index[order])
    arrays = embed(config({"e": {"source": "embeddings", "path": str(tmp_path / "emb.npz")}}), data, tmp_path, "e")
    back = np.argsort(order)
    np.testing.assert_array_equal(arrays["features_emb"], written["features_emb"][back])
    np.testing.assert_array_equal(arrays["aug_features_emb"], written["aug_features_emb"][back])
    part = load_prepared(data).splits["test"]
    np.testing.assert_array_equal(arrays["fine"], part.fine)
    assert list(arrays["layers"]) == ["emb"]


def bad_files(index):
    nan = np.ones((len(index), 3), np.float32)
    nan[2, 1] = np.nan
    return [
        ({"index": index[1:]}, "does not cover the test split exactly: 79 entries for 80 images"),
        ({"index": np.concatenate([index[:-1], index[:1]])}, "1 repeated, 1 of the split's images missing"),
        ({"index": index + 10_000}, "80 not in the split"),
        ({"index": None}, "no 'index' array"),
        ({"features_emb": nan}, "'features_emb' holds 1 non-finite values"),
        ({"features_emb": np.ones((len(index), 3, 1), np.float32)}, r"expected floats of shape \(N, D\) with N = 80"),
        ({"aug_features_emb": np.ones((len(index), 2, 5), np.float32)}, "D = 3"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_embeddings_file_is_named_and_nothing_is_written(data, tmp_path, case):
    _, index = evaluation_split(data, "fashion_mnist", "coarse_to_fine")
    overrides, message = bad_files(index)[case]
    write_embeddings(tmp_path / "emb.npz", index, overrides)
    cfg = config({"e": {"source": "embeddings", "path": str(tmp_path / "emb.npz")}})
    with pytest.raises(DataError, match=message) as e:
        embed(cfg, data, tmp_path, "e")
    assert str(tmp_path / "emb.npz") in str(e.value)
    assert not (tmp_path / "test.npz").exists()


@pytest.mark.parametrize("models, message", [
    ({"triplet": {"source": "embeddings", "path": "x.npz"}}, "'triplet' is already the name of a method"),
    ({"m": {"source": "onnx"}}, "'models.m.source' is 'onnx'; valid sources: torchvision, timm"),
    ({"m": {"source": "torchvision", "name": "resnet18"}}, "give exactly one of 'weights'"),
    ({"m": {"source": "torchvision", "name": "resnet18", "weights": "IMAGENET9K"}}, "valid weights of resnet18: IMAGENET1K_V1"),
    ({"m": {"source": "torchvision", "name": "resnet1800", "weights": "DEFAULT"}}, "'resnet1800' is not a torchvision"),
    ({"m": {"source": "timm", "name": "resnet18"}}, r"'models.m' \(source timm\) needs checkpoint"),
    ({"m": {"source": "callable", "function": "no_colon"}}, "must be 'package.module:function'"),
    ({"m": {"source": "embeddings", "path": "{dataset}.npz", "evaluate_on": {"cub200": ["open_set"]}}},
     "names dataset 'cub200', which is not in 'benchmark'"),
    ({"m": {"source": "embeddings", "path": "missing/{setting}.npz"}}, r"no such file missing/coarse_to_fine.npz"),
    ({"m": {"source": "torchvision", "name": "resnet18", "weights": "DEFAULT", "transform": {"size": 0}}},
     "'models.m.transform.size' must be a positive integer"),
    ({"m": {"source": "released", "release": "ancor", "method": "ancor", "checkpoint": "x.pt", "layers": ["probs"]}},
     "valid layers of 'ancor'"),
])
def test_bad_model_entries(models, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.npz").touch()
    (tmp_path / "x.pt").touch()
    with pytest.raises(ConfigError, match=message):
        config(models)


def test_a_model_and_a_combination_may_not_share_a_name(tmp_path):
    (tmp_path / "e.npz").touch()
    combination = [{"name": "ens", "kind": "ensemble", "models": [{"method": "supervised_coarse", "layer": "backbone"},
                                                                       {"method": "ancor", "layer": "backbone"}]}]
    benchmark = {"fashion_mnist": {"coarse_to_fine": ["supervised_coarse", "ancor"]}}
    with pytest.raises(ConfigError, match="'combinations\\[0\\].name' is 'ens', which is a method's or model's name"):
        config({"ens": {"source": "embeddings", "path": str(tmp_path / "e.npz")}}, combinations=combination,
               benchmark=benchmark)


def test_a_combination_may_join_a_model_and_a_method(resnet_file, tmp_path):
    """Its members' layers are checked (a precomputed file's only when read), and it runs wherever
    both members are evaluated."""
    from fgbench.evaluate.combine import combination_cells
    from fgbench.config import model_runs, runs

    (tmp_path / "e.npz").touch()
    models = {"m": torchvision_entry(resnet_file), "e": {"source": "embeddings", "path": str(tmp_path / "e.npz")}}

    def combination(member, layer):
        return [{"name": "cat", "kind": "concat", "models": [{"method": "supervised_coarse", "layer": "backbone"},
                                                              {"method": member, "layer": layer}]}]

    cfg = config(models, combinations=combination("m", "pooled"))
    assert combination_cells(cfg["combinations"], runs(cfg) + model_runs(cfg)) == [
        ("fashion_mnist", "coarse_to_fine", "cat", 0)]
    assert config(models, combinations=combination("e", "anything"))["combinations"][0]["models"][1]["layer"] == "anything"
    with pytest.raises(ConfigError, match="'combinations\\[0\\].models\\[1\\].layer' is 'layer4', which method 'm'"):
        config(models, combinations=combination("m", "layer4"))


def test_released_checkpoint_is_loaded_into_the_method_its_train_spec_builds(data, tmp_path):
    """A vMF MNIST release file (google-research/vmf_embeddings, layout of tests/test_released.py)
    as a model: the method is built as its train spec builds it (coarse classes, small_cnn) and
    embeds as the release's network."""
    from test_released import NDigitMNISTArch, randomised, vmf_checkpoint

    release = randomised(NDigitMNISTArch(4, 3)).eval()  # coarse_to_fine: Fashion-MNIST's 4 coarse classes
    vmf_checkpoint(tmp_path / "model_7.pt", release, 1.5)
    entry = {"source": "released", "release": "vmf", "method": "vmf", "checkpoint": str(tmp_path / "model_7.pt")}
    cfg = config({"r": entry}, methods={"vmf": {"embed_layer": ["head"], "params": {"embedding_dim": 3}}})
    arrays = embed(cfg, data, tmp_path, "r")
    images, _ = evaluation_split(data, "fashion_mnist", "coarse_to_fine")
    with torch.no_grad():  # vmf's get_embeddings: z_kappa_mult * the encoder without its classifier
        expected = 1.5 * release.encoder[:-1](to_tensor(images[:]))
    np.testing.assert_allclose(arrays["features_head"], expected.numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="'models.r.release' is 'nope'; valid releases: ancor"):
        config({"r": {**entry, "release": "nope"}})


def test_evaluate_model_prints_rows_on_the_benchmark_episodes(data, resnet_file, tmp_path, capsys):
    """One command per model; a torchvision network and a precomputed file are scored on the same
    episodes (equal draws hashes in their per-episode files)."""
    from fgbench.evaluate.units import load_units

    common = ["--dataset", "fashion_mnist", "--setting", "coarse_to_fine", "--protocol", "fewshot_5way",
              "--configfile", experiment(tmp_path, data), "--workdir", str(tmp_path / "out")]
    assert main(["evaluate-model", "--torchvision", "resnet18", "--weights-file", str(resnet_file),
                 "--image-size", "32", "--resize", "32", *common]) == 0
    assert "| resnet18 (pooled) |" in capsys.readouterr().out
    _, index = evaluation_split(next((tmp_path / "out/data").glob("fashion_mnist-*/data.npz")), "fashion_mnist",
                                "coarse_to_fine")
    write_embeddings(tmp_path / "mine.npz", index, views=5)
    assert main(["evaluate-model", "--embeddings", str(tmp_path / "mine.npz"), *common]) == 0
    assert "| mine (emb) |" in capsys.readouterr().out
    units = {m: load_units(tmp_path / f"out/metrics/fashion_mnist/coarse_to_fine/{m}/seed0/fewshot_5way.npz")
             for m in ("resnet18", "mine")}
    assert units["resnet18"]["draws_hash"] == units["mine"]["draws_hash"]
    assert len(units["mine"]["units"]["emb"]["accuracy"]) == 5


def test_evaluate_model_reuses_embeddings_only_while_the_weights_are_the_same(data, tmp_path, capsys):
    """A second call (say, for another protocol) reuses the embeddings when the model's files, the
    data and the code are unchanged; new weights in the same file are embedded again."""
    weights = tmp_path / "w.pt"
    args = ["evaluate-model", "--torchvision", "resnet18", "--weights-file", str(weights), "--image-size", "32",
            "--resize", "32", "--dataset", "fashion_mnist", "--setting", "coarse_to_fine", "--protocol",
            "fewshot_5way", "--configfile", experiment(tmp_path, data), "--workdir", str(tmp_path / "out")]

    def run(seed):
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18().state_dict(), weights)
        assert main(args) == 0
        out = capsys.readouterr().out
        return "reusing" in out, [line for line in out.splitlines() if line.startswith("| resnet18 (pooled)")]

    reused, rows = run(0)
    assert not reused and len(rows) == 1
    assert run(0) == (True, rows)  # the same weights rewritten: same content, reused
    reused, new_rows = run(1)
    assert not reused and new_rows != rows
    next((tmp_path / "out/embeddings").rglob("test.npz")).write_bytes(b"torn")  # an unreadable old file
    assert run(1) == (False, new_rows)


@pytest.mark.workflow
def test_models_beside_trained_methods_in_a_tiny_workflow(real_fashion, resnet_file, tmp_path):
    """A torchvision ResNet-18 from a saved weights file and a precomputed embeddings file, beside
    a trained method: same episodes (draws hashes), rows in the summary and the comparisons."""
    import pandas as pd

    from fgbench.config import prepare_spec
    from fgbench.data import prepare
    from fgbench.evaluate.units import load_units
    from test_workflow import snakemake, tiny_config, write_config

    cfg = tiny_config(real_fashion, combinations=[], benchmark={"fashion_mnist": {"coarse_to_fine": ["supervised_coarse"]}})
    cfg["protocols"] = {"fewshot_5way": cfg["protocols"]["fewshot_5way"]}
    cfg["report"] = {"tsne": False}
    # the precomputed file covers the test split the workflow prepares (same prepare spec)
    prepare("fashion_mnist", prepare_spec(validate(cfg), "fashion_mnist"), tmp_path / "data.npz")
    images, index = evaluation_split(tmp_path / "data.npz", "fashion_mnist", "coarse_to_fine")
    pixels = images[:].reshape(len(index), -1).astype(np.float32) / 255
    views = np.repeat(pixels[:, None], 5, axis=1)
    np.savez(tmp_path / "pixels.npz", index=index, features_pixels=pixels, aug_features_pixels=views)
    cfg["models"] = {"resnet18_file": torchvision_entry(resnet_file),
                     "raw_pixels": {"source": "embeddings", "path": str(tmp_path / "pixels.npz")}}
    cfg["combinations"] = [{"name": "cat_sup+resnet", "kind": "concat", "models": [
        {"method": "supervised_coarse", "layer": "backbone"}, {"method": "resnet18_file", "layer": "pooled"}]}]
    write_config(tmp_path / "run", cfg)
    snakemake(tmp_path / "run", "results/tables/summary.csv", "results/tables/comparisons.csv")
    metrics = tmp_path / "run/results/metrics/fashion_mnist/coarse_to_fine"
    hashes = {m: load_units(metrics / m / "seed0/fewshot_5way.npz")["draws_hash"]
              for m in ("supervised_coarse", "resnet18_file", "raw_pixels", "cat_sup+resnet")}
    assert len(set(hashes.values())) == 1, hashes
    summary = pd.read_csv(tmp_path / "run/results/tables/summary.csv")
    assert {"resnet18_file", "raw_pixels", "cat_sup+resnet"} <= set(summary["method"])
    assert set(summary.query("method == 'cat_sup+resnet'")["layer"]) == {"backbone+pooled"}
    pooled = summary.query("method == 'resnet18_file'")
    assert set(pooled["layer"]) == {"pooled"} and pooled["mean"].between(0, 1).all()
    comparisons = pd.read_csv(tmp_path / "run/results/tables/comparisons.csv", keep_default_na=False)
    five_way = comparisons.query("protocol == 'fewshot_5way'").set_index("label")
    assert {"resnet18_file (pooled)", "raw_pixels (pixels)"} <= set(five_way.index)
    # paired with the trained baseline on the same episodes
    assert five_way.loc["raw_pixels (pixels)", "test"] == "paired t over units"


def test_timm_checkpoint_gives_the_models_pre_logits(data, tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False).eval()
    torch.save(net.state_dict(), tmp_path / "timm.pt")
    cfg = config({"t": {"source": "timm", "name": "resnet18", "checkpoint": str(tmp_path / "timm.pt"), "transform": SMALL}})
    arrays = embed(cfg, data, tmp_path, "t")
    images, _ = evaluation_split(data, "fashion_mnist", "coarse_to_fine")
    with torch.no_grad():  # timm's pretrained config: ImageNet mean and std
        expected = net.forward_head(net.forward_features(imagenet_input(to_tensor(images[:]))), pre_logits=True)
    np.testing.assert_allclose(arrays["features_pooled"], expected.numpy(), atol=1e-4)


def test_a_model_can_be_the_baseline_on_its_first_layer(resnet_file):
    from fgbench.config import compare_spec

    cfg = config({"m": torchvision_entry(resnet_file, layers=["layer4", "pooled"])},
                 compare={"baseline": {"coarse_to_fine": "m"}})
    assert compare_spec(cfg)["baseline"]["coarse_to_fine"] == "m (layer4)"
