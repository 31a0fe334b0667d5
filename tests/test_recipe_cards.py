"""Recipe cards (fgbench.report.recipes): rendered from the resolved spec, they show the values
the experiment files set, the methods' defaults for what they leave out, and nothing by hand."""

import inspect

import pytest
import yaml

from conftest import REPO
from fgbench.cli import main
from fgbench.config import validate
from fgbench.methods import get_method_class
from fgbench.report.recipes import MISSING, format_recipe_markdown, recipe_card

EXPERIMENTS = sorted((REPO / "workflow/experiments").glob("*.yaml"))


def load(path) -> dict:
    return yaml.safe_load(path.read_text())


def card_of(path):
    return recipe_card(validate(load(path)))


def test_breeds_card_shows_the_yaml_values():
    card = card_of(REPO / "workflow/experiments/coarse_to_fine_breeds.yaml")
    # four datasets with one recipe per method: one column per method
    assert list(card.columns) == ["supervised_coarse", "moco", "ancor", "scgm_g", "scgm_a"]
    for method in card.columns:  # the experiment's train section (ANCOR's and SCGM's recipe)
        assert card.loc["train.lr", method] == "0.03"
        assert card.loc["train.batch_size", method] == "256"
        assert card.loc["train.epochs", method] == "200"
        assert card.loc["train.schedule", method] == "cosine" and card.loc["train.cycles", method] == "10"
        assert card.loc["backbone.name", method] == "resnet50"
    assert card.loc["params.queue_size", "ancor"] == "65536"
    assert card.loc["params.n_subclasses", "scgm_g"] == "100"
    assert card.loc["params.release_compat", "scgm_a"] == "false"
    assert card.loc["params.queue_size", "scgm_g"] == MISSING  # SCGM-G has no queue
    assert card.loc["layers", "ancor"] == "backbone, head"
    # a parameter the file leaves out shows the method's default
    default = inspect.signature(get_method_class("scgm_a").__init__).parameters["tau1"].default
    assert card.loc["params.tau1", "scgm_a"] == f"{default:g}"
    # label-free MoCo keeps its last epoch; the others are selected on validation
    assert card.loc["selection", "moco"] == "last epoch"
    assert card.loc["selection", "scgm_g"] == "best val. Recall@1 (head)"
    assert card.loc["trains on", "ancor"] == "coarse labels" and card.loc["trains on", "moco"] == "no labels"
    assert "train.num_workers" not in card.index  # where it runs, not the recipe


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_card_has_each_methods_learning_rate_and_epochs(path):
    """For every experiment: the card's lr and epochs of each method are the YAML's (the method's
    own train section over the dataset's over the experiment's)."""
    raw, cfg = load(path), validate(load(path))
    card = recipe_card(cfg)
    for dataset, settings in cfg["benchmark"].items():
        for methods in settings.values():
            for method in methods:
                layers = [(raw.get("train") or {}), (raw.get("datasets", {}).get(dataset) or {}).get("train") or {},
                          ((raw.get("methods") or {}).get(method) or {}).get("train") or {}]
                columns = [c for c in card.columns if c.split(" · ")[0] == method]
                for key in ("lr", "epochs"):
                    expected = next((t[key] for t in reversed(layers) if key in t), cfg["train"][key])
                    assert any(card.loc[f"train.{key}", c] == f"{expected:g}" for c in columns), (method, key)


def test_a_method_in_two_settings_and_datasets_with_different_recipes_get_columns():
    cfg = load(REPO / "config.yaml")
    card = recipe_card(validate(cfg))
    assert {"triplet · coarse_to_fine", "triplet · open_set"} <= set(card.columns)
    assert card.loc["trains on", "triplet · coarse_to_fine"] == "coarse labels"
    assert card.loc["trains on", "triplet · open_set"] == "fine labels"
    assert card.loc["train.lr", "vmf"] == "0.05" and card.loc["train.momentum", "vmf"] == "0.99"
    assert card.loc["train.lr", "stml"] == "0.001" and card.loc["train.batch_size", "stml"] == "120"
    two = {"seeds": [0], "benchmark": {"mnist": {"closed_set": ["softmax"]}, "fashion_mnist": {"closed_set": ["softmax"]}},
           "datasets": {"mnist": {"train": {"lr": 0.5}}}, "protocols": {"closed_set": {}}}
    card = recipe_card(validate(two))
    assert card.loc["train.lr"].to_dict() == {"softmax · mnist": "0.5", "softmax · fashion_mnist": "0.001"}


def test_cli_prints_the_card_of_an_experiment_file(capsys):
    path = REPO / "workflow/experiments/vmf_mnist.yaml"
    assert main(["recipes", "--configfile", str(path)]) == 0
    out = capsys.readouterr().out
    assert out == format_recipe_markdown(card_of(path), "vmf_mnist")
    assert out.startswith("# Recipe card: vmf_mnist") and "| train.lr |" in out


def test_cli_writes_csv_and_markdown(tmp_path):
    path = REPO / "workflow/experiments/vmf_mnist.yaml"
    csv, md = tmp_path / "recipes.csv", tmp_path / "recipes.md"
    assert main(["recipes", "--configfile", str(path), "--csv", str(csv), "--markdown", str(md)]) == 0
    assert csv.read_text().splitlines()[0] == "key," + ",".join(card_of(path).columns)
    assert main(["recipes", "--configfile", str(tmp_path / "none.yaml")]) == 2


def test_keys_a_config_gains_appear_without_a_change_here():
    """Rendered generically: a new train key or per-method key becomes a row (other methods: —)."""
    cfg = validate({"seeds": [0], "benchmark": {"mnist": {"closed_set": ["softmax", "vmf"]}},
                    "protocols": {"closed_set": {}}})
    cfg["methods"]["softmax"]["future_key"] = "euclidean"
    cfg["methods"]["softmax"]["train"]["future_option"] = "bf16"
    card = recipe_card(cfg)
    assert card.loc["method.future_key"].to_dict() == {"softmax": "euclidean", "vmf": MISSING}
    assert card.loc["train.future_option"].to_dict() == {"softmax": "bf16", "vmf": MISSING}
