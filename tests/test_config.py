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


def check(**changes):
    cfg = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return fgconfig.validate(cfg)


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
        ({"train__optimizer": "lamb"}, "'train.optimizer' is 'lamb'; valid values: adam, adamw, adamp, sgd"),
        ({"train__precision": "fp8"}, "'train.precision' is 'fp8'; valid values: fp32, bf16, fp16"),
        ({"methods__triplet__train": {"precision": "half"}}, "'methods.triplet.train.precision' is 'half'"),
        ({"train__replacement": "no"}, "'train.replacement' is 'no'; valid values: False, True"),
        ({"methods__scgm_g__train": {"drop_last": 0.5}}, "'methods.scgm_g.train.drop_last' is 0.5; valid values: False, True"),
        ({"train__amp": True}, "unknown key(s) ['amp'] in 'train'"),
        ({"methods__stml__metric": "manhattan"}, "'methods.stml.metric' is 'manhattan'; valid values: cosine, euclidean"),
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
        ({"methods__moco__train": {"bn_group_size": 0}}, "'methods.moco.train.bn_group_size' must be a positive integer, got 0"),
        ({"train__bn_group_size": 6.5}, "'train.bn_group_size' must be a positive integer, got 6.5"),
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


def test_method_metric_reaches_validation_and_retrieval_only():
    """``methods.X.metric`` sets the distance of that method's validation and retrieval; other
    methods keep the retrieval protocol's (cosine); few-shot protocols have no metric."""
    cfg = check(methods__stml__metric="euclidean")
    assert fgconfig.train_spec(cfg, "fashion_mnist", "open_set", "stml", 0)["metric"] == "euclidean"
    assert fgconfig.protocol_spec(cfg, "retrieval", "stml")["metric"] == "euclidean"
    assert fgconfig.train_spec(cfg, "fashion_mnist", "open_set", "triplet", 0)["metric"] == "cosine"
    assert fgconfig.protocol_spec(cfg, "retrieval", "triplet")["metric"] == "cosine"
    assert fgconfig.protocol_spec(cfg, "retrieval")["metric"] == "cosine"
    assert "metric" not in fgconfig.protocol_spec(cfg, "fewshot_5way", "stml")
    # a protocol-wide metric still applies to methods without their own
    cfg = check(protocols__retrieval={"metric": "euclidean"}, methods__triplet__metric="cosine")
    assert fgconfig.protocol_spec(cfg, "retrieval", "stml")["metric"] == "euclidean"
    assert fgconfig.protocol_spec(cfg, "retrieval", "triplet")["metric"] == "cosine"


def test_default_run_recipe_is_unchanged_by_the_new_keys():
    """The new train keys default to today's behaviour: fp32, RevDML's sampling with
    replacement, dropped last batches, cosine retrieval."""
    cfg = check()
    for _, setting, method, seed in fgconfig.runs(cfg):
        spec = fgconfig.train_spec(cfg, "fashion_mnist", setting, method, seed)
        assert (spec["train"]["precision"], spec["train"]["replacement"], spec["train"]["drop_last"], spec["metric"]) == \
            ("fp32", True, True, "cosine")


# --- the paper configs are the releases' recipes ------------------------------------------------
EXPERIMENTS = REPO / "workflow/experiments"


def paper_spec(experiment, dataset, setting, method):
    cfg = fgconfig.validate(yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text()))
    return fgconfig.train_spec(cfg, dataset, setting, method, 0)


def sgd_recipe(spec):
    t = spec["train"]
    return t["optimizer"], t["lr"], t["momentum"], t["nesterov"], t["weight_decay"]


def test_vmf_mnist_baselines_train_with_their_own_recipes():
    # google-research/vmf_embeddings run.sh: softmax 0.1/0.9, cosine 0.5/0.9 Nesterov, ArcFace
    # 0.05/0.9, vMF 1.0/0.99 Nesterov (README), no weight decay (conf/mode/train.yaml)
    recipes = {"softmax": ("sgd", 0.1, 0.9, False, 0.0), "cosine_softmax": ("sgd", 0.5, 0.9, True, 0.0),
               "arcface": ("sgd", 0.05, 0.9, False, 0.0), "vmf": ("sgd", 1.0, 0.99, True, 0.0)}
    for method, recipe in recipes.items():
        assert sgd_recipe(paper_spec("vmf_mnist", "mnist", "closed_set", method)) == recipe, method


@pytest.mark.parametrize("experiment", sorted(p.stem for p in EXPERIMENTS.glob("vmf_*.yaml")))
def test_every_vmf_method_has_its_own_train_section(experiment):
    cfg = yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text())
    for method in ("vmf", "softmax", "cosine_softmax", "arcface"):
        own = cfg["methods"][method]["train"]
        assert {"optimizer", "lr", "momentum", "nesterov", "weight_decay"} <= set(own), (experiment, method)
        assert not {"optimizer", "lr", "momentum", "nesterov", "weight_decay"} & set(cfg["train"]), experiment
    # the release retrieves the unnormalised softmax's raw z with an L2 index
    assert cfg["methods"]["softmax"]["metric"] == "euclidean"


def test_vmf_sop_batches_are_the_release_episodes():
    # google-research/vmf_embeddings README (SOP): sampler=episodic n_classes=32 n_samples=2,
    # drawn without replacement (datasets/utils.py EpisodicBatchSampler)
    t = paper_spec("vmf_retrieval_sop", "sop", "open_set", "vmf")["train"]
    assert (t["sampler"], t["batch_size"] // t["samples_per_class"], t["samples_per_class"], t["replacement"]) == \
        ("class_random", 32, 2, False)


@pytest.mark.parametrize("experiment, dataset", [("metric_learning_cub_cars_128", "cub200"),
                                                 ("metric_learning_sop_512", "sop")])
def test_stml_trains_with_adamp_and_its_crops(experiment, dataset):
    # tjddus9597/STML-CVPR22 code/main.py: AdamP(lr 1e-4, weight_decay 1e-2, nesterov=True);
    # code/dataset/utils.py: RandomResizedCrop scale (0.16, 1); code/utils.py evaluate_euclid
    spec = paper_spec(experiment, dataset, "open_set", "stml")
    t = spec["train"]
    assert (t["optimizer"], t["lr"], t["weight_decay"], t["nesterov"]) == ("adamp", 1e-4, 0.01, True)
    assert t["augment"] == "stml_crop_flip" and spec["metric"] == "euclidean"
    from fgbench.data.transforms import build_augment

    assert build_augment(t["augment"], 224).scale == (0.16, 1.0)


def test_stml_sop_recipes():
    # tjddus9597/STML-CVPR22 README, SOP commands: --delta 0.9 --IPC 2 --momentum 0.9; the
    # from-scratch one: resnet18, embedding 128, lr 5e-4 fixed, weight decay 1e-2, batch 120, 180 epochs
    for experiment in ("metric_learning_sop_128", "metric_learning_sop_512", "metric_learning_sop_stml_scratch"):
        params = paper_spec(experiment, "sop", "open_set", "stml")["params"]
        assert (params["delta"], params["momentum"], params["nn_per_seed"]) == (0.9, 0.9, 2), experiment
    spec = paper_spec("metric_learning_sop_stml_scratch", "sop", "open_set", "stml")
    t = spec["train"]
    assert spec["backbone"] == {"name": "resnet18"} and spec["params"]["embedding_dim"] == 128
    assert (t["optimizer"], t["lr"], t["schedule"], t["weight_decay"], t["batch_size"], t["epochs"]) == \
        ("adamp", 5e-4, "constant", 0.01, 120, 180)
    # main.py's --emb-lr default (1e-4) for the heads, which the command leaves unset
    assert spec["params"]["head_lr_scale"] * t["lr"] == pytest.approx(1e-4)


def test_sop_normsoftmax_class_weights_learn_at_0_002():
    # Confusezius/Revisiting_Deep_Metric_Learning_PyTorch Sample_Runs (SOP_Softmax): --loss_softmax_lr 0.002
    for experiment in ("metric_learning_sop_128", "metric_learning_sop_512"):
        spec = paper_spec(experiment, "sop", "open_set", "normsoftmax")
        assert spec["params"]["proxy_lr_scale"] * spec["train"]["lr"] == pytest.approx(0.002)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
def test_paper_configs_train_in_fp32(experiment):
    """Every release trains in fp32; a paper config that does not must say why in deviations.md."""
    cfg = fgconfig.validate(yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text()))
    for dataset, setting, method, _ in fgconfig.runs(cfg):
        assert fgconfig.train_spec(cfg, dataset, setting, method, 0)["train"]["precision"] == "fp32"


@pytest.mark.parametrize("experiment", ["coarse_to_fine_breeds", "coarse_to_fine_cifar100", "coarse_to_fine_tiered"])
def test_coarse_to_fine_combinations_and_scgm_batches(experiment):
    # guybuk/ANCOR ensemble.py / concat.py / cascade.py combine a supervised model with a
    # separately trained MoCo model; nijingchao/SCGM's train loader keeps the last batch
    cfg = fgconfig.validate(yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text()))
    pairs = {c["name"]: [m["method"] for m in c["models"]] for c in cfg["combinations"]}
    for kind in ("ensemble", "concat", "cascade"):
        assert pairs[f"{kind}_sup+moco"] == ["supervised_coarse", "moco"]
        assert pairs[f"{kind}_sup+ancor"] == ["supervised_coarse", "ancor"]  # the extra
    dataset = next(iter(cfg["benchmark"]))
    for method in ("scgm_g", "scgm_a"):
        assert fgconfig.train_spec(cfg, dataset, "coarse_to_fine", method, 0)["train"]["drop_last"] is False
    assert fgconfig.train_spec(cfg, dataset, "coarse_to_fine", "ancor", 0)["train"]["drop_last"] is True
