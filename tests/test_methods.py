"""Methods through the registry: gradients, embeddings, losses against hand computations."""

import inspect

import pytest
import torch

from conftest import class_batch
from fgbench.data.samplers import ClassRandomBatchSampler
from fgbench.errors import ConfigError
from fgbench.methods import build_method, get_method_class, list_methods, register_method
from fgbench.models import get_backbone
from fgbench.testing import CHECKS


def fast_params(name) -> dict:
    """The papers' queue of 65536 only slows these tests down."""
    return {"queue_size": 16} if "queue_size" in inspect.signature(get_method_class(name).__init__).parameters else {}


def make(name, **params):
    torch.manual_seed(0)
    return build_method(name, get_backbone("small_cnn", width=1), num_classes=4, num_samples=32,
                        params={**fast_params(name), **params})


def fixed_batch():
    batch = class_batch(32)
    noise = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return {**batch, "view2": batch["images"].flip(-1) + 0.05 * noise}  # a second "augmented" view


def test_registry():
    assert {"supervised_coarse", "triplet"} <= set(list_methods())
    with pytest.raises(ConfigError, match="unknown method 'nope'; valid methods: ancor, .*, triplet"):
        get_method_class("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_method("triplet")(type("Dup", (), {}))
    with pytest.raises(ConfigError, match="methods.triplet.params"):
        make("triplet", no_such_argument=1)


@pytest.mark.parametrize("name", list_methods())
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_every_method_keeps_the_plugin_contract(name, check, one_thread):
    """The checks a plug-in author runs (fgbench.testing): every parameter gets a gradient, the
    loss falls on a fixed batch, every layer embeds, state dicts round-trip, resume is exact."""
    check(name, fast_params(name))


def test_supervised_coarse_is_cross_entropy():
    method, batch = make("supervised_coarse"), fixed_batch()
    loss, _ = method.training_step(batch)
    logits = method.classifier(method.backbone(batch["images"]))
    expected = -torch.log_softmax(logits, 1)[torch.arange(32), batch["labels"]].mean()
    torch.testing.assert_close(loss, expected)


def test_class_random_sampler_composition():
    labels = torch.arange(5).repeat_interleave(20)
    make_sampler = lambda seed: ClassRandomBatchSampler(  # noqa: E731
        labels, batch_size=12, samples_per_class=2, generator=torch.Generator().manual_seed(seed))
    batches = list(make_sampler(0))
    assert len(batches) == 100 // 12
    for batch in batches:
        assert len(batch) == 12
        pairs = labels[torch.tensor(batch)].view(6, 2)
        assert (pairs[:, 0] == pairs[:, 1]).all()  # each draw: 2 images of one class
    assert batches == list(make_sampler(0)) and batches != list(make_sampler(1))


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_torchvision_backbones(name, dim):
    net = get_backbone(name, weights=None).eval()
    assert net.out_dim == dim
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 64, 64)).shape == (1, dim)


def test_small_cnn_width():
    net = get_backbone("small_cnn", width=2)
    assert net.out_dim == 240 and net.features[0].out_channels == 12
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'"):
        get_backbone("vgg")
