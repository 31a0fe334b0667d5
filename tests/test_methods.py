"""Methods through the registry: gradients, embeddings, losses against hand computations."""

import inspect

import pytest
import torch
import torch.nn.functional as F

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
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)
    images = torch.rand(32, 1, 28, 28, generator=g) * 0.3
    images[torch.arange(32), 0, labels * 6 + 2, :] += 0.7  # the class is visible
    view2 = images.flip(-1) + 0.05 * torch.rand(32, 1, 28, 28, generator=g)  # a second "augmented" view
    return {"images": images, "view2": view2, "labels": labels, "index": torch.arange(32)}


def queue_state(method):
    return {n: b.clone() for n, b in method.named_buffers() if "queue" in n}


def test_registry():
    assert {"supervised_coarse", "triplet"} <= set(list_methods())
    with pytest.raises(ConfigError, match="unknown method 'nope'; valid methods: ancor, moco, scgm_a, scgm_g, supervised_coarse, triplet"):
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


def test_triplet_loss_against_hand_computation():
    """RevDML: mean over mined triplets of relu(|a-p|^2 - |a-n|^2 + margin), zeros included."""
    method = make("triplet", margin=0.2)
    angles = torch.tensor([0.0, 20.0, 40.0, 60.0, 80.0]) * torch.pi / 180
    emb = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    labels = torch.tensor([0, 0, 1, 1, 2])
    triplets = (torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 3, 2]), torch.tensor([2, 4, 4, 0]))
    got = method.loss(emb, labels, triplets)
    terms = []
    for a, p, n in zip(*triplets):
        terms.append(max(0.0, ((emb[a] - emb[p]) ** 2).sum() - ((emb[a] - emb[n]) ** 2).sum() + 0.2))
    expected = sum(terms) / len(terms)
    assert any(t == 0 for t in terms)  # the mean includes the zero terms (pml would drop them)
    assert got.item() == pytest.approx(float(expected), abs=1e-6)


def test_distance_weighted_miner_triplets_are_valid():
    method = make("triplet")
    emb = F.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = torch.arange(5).repeat_interleave(8)
    a, p, n = method.miner(emb, labels)
    assert len(a) == 40  # one triplet per anchor
    assert (labels[a] == labels[p]).all() and (a != p).all() and (labels[a] != labels[n]).all()


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


def test_distance_weighted_miner_samples_inverse_density():
    """In 3-d, q(d)^-1 is proportional to 1/d: negatives at distance 0.6, 1.2, 1.8 from the
    anchor are drawn with probabilities proportional to 1/0.6, 1/1.2, 1/1.8."""
    method = make("triplet")
    dists = torch.tensor([0.6, 1.2, 1.8])
    theta = 2 * torch.asin(dists / 2)  # chord length d on the unit circle
    emb = torch.cat([torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]), torch.stack([torch.cos(theta), torch.sin(theta), 0 * theta], 1)])
    labels = torch.tensor([0, 0, 1, 1, 1])
    torch.manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(3000):
        a, _, n = method.miner(emb, labels)
        counts += torch.bincount(n[a == 0], minlength=5)
    expected = (1 / dists) / (1 / dists).sum()
    torch.testing.assert_close(counts[2:] / counts.sum(), expected, atol=0.02, rtol=0)
