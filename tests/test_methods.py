"""Methods through the registry: gradients, embeddings, losses against hand computations."""

import inspect

import pytest
import torch

from conftest import class_batch
from fgbench.data.samplers import ClassRandomBatchSampler
from fgbench.errors import ConfigError
from fgbench.methods import build_method, get_method_class, list_methods, register_method
from fgbench.models import get_backbone


def make(name, **params):
    torch.manual_seed(0)
    if "queue_size" in inspect.signature(get_method_class(name).__init__).parameters:
        params.setdefault("queue_size", 16)  # the papers' 65536 only slows these tests down
    return build_method(name, get_backbone("small_cnn", width=1), num_classes=4, num_samples=32, params=params)


def fixed_batch():
    batch = class_batch(32)
    noise = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return {**batch, "view2": batch["images"].flip(-1) + 0.05 * noise}  # a second "augmented" view


def queue_state(method):
    return {n: b.clone() for n, b in method.named_buffers() if "queue" in n}


def test_registry():
    assert {"supervised_coarse", "triplet"} <= set(list_methods())
    with pytest.raises(ConfigError, match="unknown method 'nope'; valid methods: ancor, .*, triplet"):
        get_method_class("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_method("triplet")(type("Dup", (), {}))
    with pytest.raises(ConfigError, match="methods.triplet.params"):
        make("triplet", no_such_argument=1)


@pytest.mark.parametrize("name", list_methods())
def test_every_parameter_gets_a_gradient(name):
    method = make(name).train()
    loss, logs = method.training_step(fixed_batch())
    assert loss.ndim == 0 and torch.isfinite(loss) and all(isinstance(v, float) for v in logs.values())
    loss.backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", list_methods())
def test_loss_decreases_on_a_fixed_batch(name):
    method, batch = make(name).train(), fixed_batch()
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    queues, losses = queue_state(method), []
    for _ in range(8):
        # On one fixed batch a queue would fill with the batch's own keys, negatives against
        # themselves: restore it, so the loss measures learning on the batch.
        method.load_state_dict({**method.state_dict(), **queues})
        loss, _ = method.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", list_methods())
def test_embed_layers_and_state_roundtrip(name):
    method = make(name).eval()
    images = fixed_batch()["images"]
    for layer in method.layers:
        assert method.embed(images, layer).shape[0] == 32
    with pytest.raises(ConfigError, match="has no layer 'nope'"):
        method.embed(images, "nope")
    clone = make(name)
    clone.load_state_dict(method.state_dict(), strict=True)
    torch.testing.assert_close(clone.eval().embed(images, None), method.embed(images, None))
    saved = method.inference_state()  # what model.pt keeps: enough to embed, nothing more
    assert not [k for k in saved if k.startswith(("key_", "queue"))]
    fresh = make(name)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # so that only the load can make the embeddings match
    fresh.load_inference_state(saved)
    for layer in method.layers:
        torch.testing.assert_close(fresh.eval().embed(images, layer), method.embed(images, layer))


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
