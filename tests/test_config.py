"""Config validation: defaults filled in, and one clear message per bad value."""

import copy

import pytest
import yaml

from conftest import REPO
from fgbench import config as fgconfig
from fgbench.errors import ConfigError
from fgbench.methods import build_method
from fgbench.models import get_backbone

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def changed(**changes):
    """The default config with ``a__b=value`` set (``a.b``)."""
    cfg = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return cfg


def check(**changes):
    return fgconfig.validate(changed(**changes))


def test_default_config_resolves():
    cfg = check()
    c2f = ["supervised_coarse", "moco", "ancor", "scgm_g", "scgm_a", "triplet"]
    open_set, closed_set = ["triplet", "lsd", "margin", "multisimilarity", "stml"], ["vmf", "softmax", "cosine_softmax", "arcface"]
    assert fgconfig.runs(cfg) == [("fashion_mnist", s, m, 0) for s, ms in
                                  (("coarse_to_fine", c2f), ("open_set", open_set), ("closed_set", closed_set)) for m in ms]
    # closed-set accuracy only where train and test share classes and the method embeds probabilities
    assert "closed_set" in fgconfig.protocols_for(cfg, "closed_set", "vmf")
    assert "closed_set" not in fgconfig.protocols_for(cfg, "open_set", "stml")
    spec = fgconfig.train_spec(cfg, "fashion_mnist", "open_set", "triplet", 0)
    # method train overrides win over the global train section, which wins over the defaults
    assert spec["train"]["sampler"] == "class_random" and spec["train"]["epochs"] == DEFAULT["train"]["epochs"]
    assert spec["train"]["optimizer"] == fgconfig.TRAIN_DEFAULTS["optimizer"]
    assert spec["setting_def"]["train_classes"] == [0, 1, 2, 3, 4]
    assert cfg["protocols"]["fewshot_intra"]["max_ways"] == 5 and cfg["protocols"]["fewshot_5way"]["n_query"] == 15
    # dataset defaults fill the transforms; a method's train section overrides them
    assert spec["train"]["augment"] == "none" and spec["eval_transform"] == "none" and spec["normalize"] is None
    assert fgconfig.train_spec(cfg, "fashion_mnist", "coarse_to_fine", "ancor", 0)["train"]["augment"] == "rrc_flip"
    assert fgconfig.embed_spec(cfg, "fashion_mnist")["view_augment"] == "crop_flip"
    assert cfg["methods"]["ancor"]["embed_layer"] == ["backbone", "head"] and cfg["methods"]["triplet"]["embed_layer"] == ["head"]
    assert [c["classifier"] for c in cfg["combinations"]] == ["logreg", "cosine_nn", "cosine_nn"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"benchmark": {"fashion_mnist": {"open_set": ["tripplet"]}}},
         "unknown method 'tripplet'; valid methods: "),
        ({"benchmark": {"fmnist": {"open_set": ["triplet"]}}}, "unknown dataset 'fmnist'; valid datasets: cars196, cifar10, cifar100, cub200, entity13, entity30, "
         "fashion_mnist, living17, mnist, nonliving26, sop, tiered_imagenet"),
        ({"benchmark": {"fashion_mnist": {"openset": ["triplet"]}}}, "unknown setting 'openset'"),
        ({"protocols": {"fewshot_10way": {}}}, "unknown protocol 'fewshot_10way' in 'protocols'; valid protocols: fewshot_5way"),
        ({"train__epochs": 0}, "'train.epochs' must be a positive integer, got 0"),
        ({"train__epochs": -3}, "'train.epochs' must be a positive integer, got -3"),
        ({"methods__triplet__train": {"batch_size": 0}}, "'methods.triplet.train.batch_size' must be a positive integer"),
        ({"protocols__fewshot_5way__n_way": 1}, "'protocols.fewshot_5way.n_way' must be at least 2"),
        ({"protocols__fewshot_5way__n_way": 0}, "'protocols.fewshot_5way.n_way' must be a positive integer"),
        ({"protocols__fewshot_all__n_shot": 0}, "'protocols.fewshot_all.n_shot' must be a positive integer, got 0"),
        ({"protocols__fewshot_all__n_aug": 9}, "exceeds embed.views = 5"),
        ({"train__optimizer": "adamw"}, "'train.optimizer' is 'adamw'; valid values: adam, sgd"),
        ({"train__lrate": 0.1}, "unknown key(s) ['lrate'] in 'train'"),
        ({"benchmark": {"fashion_mnist": {"open_set": ["supervised_coarse"]}}}, "trains on coarse labels"),
        ({"methods__tripet": {}}, "unknown method 'tripet'"),
        ({"seeds": [-1]}, "'seeds' must list non-negative integers"),
        ({"train__schedule": "step"}, "'train.schedule' is 'step'; valid values: constant, cosine"),
        ({"train__augment": "blur"}, "'train.augment' is 'blur'; valid values: none, crop_flip"),
        ({"datasets__fashion_mnist__view_augment": "jitter"}, "'datasets.fashion_mnist.view_augment' is 'jitter'"),
        ({"methods__triplet__embed_layer": "logits"}, "'methods.triplet.embed_layer' names 'logits'; valid layers of 'triplet': backbone, head"),
        ({"methods__triplet__embed_layer": ["head", "head"]}, "must list distinct layers"),
        ({"methods__ancor__params": {"dim": 64}}, "unknown parameter(s) ['dim'] in 'methods.ancor.params'; valid: embedding_dim,"),
    ],
)
def test_bad_values_name_the_key(changes, message):
    with pytest.raises(ConfigError) as err:
        check(**changes)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("experiment", sorted(p.name for p in (REPO / "workflow/experiments").glob("*.yaml")))
def test_paper_configs_validate_and_build_every_method(experiment):
    """Every method of a paper config builds with its parameters (on a small backbone; queues
    shrunk): a misnamed parameter fails here, not hours into a GPU job."""
    cfg = fgconfig.validate(yaml.safe_load((REPO / "workflow/experiments" / experiment).read_text()))
    for name, method in cfg["methods"].items():
        params = {**method["params"], **({"queue_size": 8} if "queue_size" in method["params"] else {})}
        build_method(name, get_backbone("small_cnn"), num_classes=5, num_samples=10, epochs=cfg["train"]["epochs"], params=params)
