"""MoCo-v2 and ANCOR: the contrast loss against hand computations, one training step, resume."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fgbench.errors import ConfigError
from fgbench.methods import build_method
from fgbench.methods.contrastive import ANCOR, MoCo
from fgbench.models import get_backbone


class Tiny(nn.Module):
    """A backbone of two inputs: identity features, so head inputs are set by hand."""

    out_dim = 2

    def forward(self, x):
        return x


def make(name, seed=0, **params):
    torch.manual_seed(seed)
    return build_method(name, get_backbone("small_cnn", width=1), num_classes=4, num_samples=32,
                        params={"queue_size": 16, **params})


def fixed_batch():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(2)
    images = torch.rand(8, 1, 28, 28, generator=g) * 0.3
    images[torch.arange(8), 0, labels * 6 + 2, :] += 0.7  # the coarse class is visible
    view2 = (images + 0.05 * torch.randn(images.shape, generator=g)).flip(-1)
    return {"images": images, "view2": view2, "labels": labels, "index": torch.arange(8)}


def hand_built_ancor(metric="angular"):
    """dim 2, two classes, queue size 2, class weights w0=(1,0), w1=(0,1), T=0.5."""
    method = ANCOR(Tiny(), num_classes=2, embedding_dim=2, mlp=False, queue_size=2, temperature=0.5, metric=metric)
    with torch.no_grad():
        method.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        method.queues.queue.copy_(torch.tensor([[[1.0, 1.0], [2.0, -1.0]], [[-1.0, 0.0], [0.0, -3.0]]]))
    return method


E_Q = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
K = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
Y = torch.tensor([0, 1])


def manual_loss(queue, weights, T=0.5, angular=True):
    """Per sample: A(v) = N(N(v) - N(w_y)); logits [A(q).A(k), A(q).A(u) for u in queue[y]] / T."""
    def n(v):
        return [x / math.sqrt(sum(c * c for c in v)) for x in v]

    def a(v, w):
        if not angular:
            return n(v)
        nv, nw = n(v), n(w)
        return n([nv[0] - nw[0], nv[1] - nw[1]])

    def dot(u, v):
        return u[0] * v[0] + u[1] * v[1]

    losses = []
    for q, k, y in zip(E_Q.tolist(), K.tolist(), Y.tolist()):
        w = weights[y]
        aq = a(q, w)
        logits = [dot(aq, a(k, w)) / T] + [dot(aq, a(u, w)) / T for u in queue[y]]
        losses.append(-logits[0] + math.log(sum(math.exp(z) for z in logits)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("metric", ["angular", "norm"])
def test_ancor_contrast_loss_by_hand(metric):
    method = hand_built_ancor(metric)
    loss = method.contrast_loss(E_Q, K, Y)
    expected = manual_loss(method.queues.queue.tolist(), [[1.0, 0.0], [0.0, 1.0]], angular=metric == "angular")
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert method.contrast_logits(E_Q, K, Y).shape == (2, 3)  # positive + the own class's 2 keys


def test_ancor_negatives_come_only_from_the_own_class_queue():
    method = hand_built_ancor()
    before = method.contrast_logits(E_Q, K, Y).detach()
    with torch.no_grad():
        method.queues.queue[1] = torch.tensor([[5.0, 1.0], [1.0, 7.0]])  # class 1's queue only
    after = method.contrast_logits(E_Q, K, Y).detach()
    torch.testing.assert_close(after[0], before[0])  # sample of class 0: unchanged
    assert not torch.allclose(after[1, 1:], before[1, 1:])
    torch.testing.assert_close(after[1, 0], before[1, 0])  # its positive is unchanged


def test_ancor_class_weights_get_no_gradient_from_the_contrast():
    method, e = hand_built_ancor(), E_Q.clone().requires_grad_(True)
    method.contrast_loss(e, K, Y).backward()
    assert method.classifier.weight.grad is None and e.grad is not None and e.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["moco", "ancor"])
def test_training_step_decreases_the_loss(name):
    """Against fixed negatives: the queues are reset after each step (on a fixed batch they would
    fill with keys of the same 8 images, negatives of themselves, and the loss would rise)."""
    method, batch = make(name).train(), fixed_batch()
    queues = method.queue if name == "moco" else method.queues
    negatives = {k: v.clone() for k, v in queues.state_dict().items()}
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        loss, logs = method.training_step(batch)
        queues.load_state_dict(negatives)
        assert all(isinstance(v, float) for v in logs.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    key_params = [p for n, p in method.named_parameters() if n.startswith("key_")]
    assert key_params and all(not p.requires_grad and p.grad is None for p in key_params)
    query_params = [(n, p) for n, p in method.named_parameters() if not n.startswith("key_")]
    assert all(p.requires_grad and p.grad is not None for _, p in query_params)


def test_ancor_logs():
    _, logs = make("ancor").train().training_step(fixed_batch())
    assert set(logs) == {"cls_loss", "contrast_loss", "train_accuracy"}
    _, logs = make("moco").train().training_step(fixed_batch())
    assert set(logs) == {"contrast_accuracy"}


def test_ancor_step_is_query_update_keys_loss_enqueue():
    """Rebuild one training step by hand from a copy: momentum update before the keys, the loss
    against the queue as it was, then the raw keys enter their classes' queues."""
    method, batch = make("ancor", momentum=0.5).train(), fixed_batch()
    method.training_step(batch)  # fill part of the queues first
    ref = make("ancor", seed=1, momentum=0.5).train()
    ref.load_state_dict(method.state_dict())
    ptr = method.queues.ptr.clone()
    old_key = method.key_projector[0].weight.clone()
    loss, _ = method.training_step(batch)

    e, logits = ref.query(batch["images"])
    query_w = ref.projector[0].weight.detach().clone()
    ref.update_key_encoder()
    torch.testing.assert_close(ref.key_projector[0].weight, 0.5 * old_key + 0.5 * query_w)
    k = ref.keys(batch["view2"])
    expected = F.cross_entropy(logits, batch["labels"]) + ref.contrast_loss(e, k, batch["labels"])
    torch.testing.assert_close(loss, expected)
    for c in range(4):
        slots = (ptr[c] + torch.arange(2)) % 16
        torch.testing.assert_close(method.queues.queue[c, slots], k[batch["labels"] == c])
    assert method.queues.ptr.tolist() == ((ptr + 2) % 16).tolist()


def test_moco_step_by_hand():
    method, batch = make("moco", momentum=0.5).train(), fixed_batch()
    ref = make("moco", seed=1, momentum=0.5).train()
    ref.load_state_dict(method.state_dict())
    queue = method.queue.queue.clone()
    loss, _ = method.training_step(batch)
    q = F.normalize(ref.projector(ref.backbone(batch["images"])), dim=1)
    ref.update_key_encoder()
    k = F.normalize(ref.keys(batch["view2"]), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / 0.2
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.zeros(8, dtype=torch.long)))
    torch.testing.assert_close(method.queue.queue[:8], k)  # normalised keys, enqueued from 0
    assert int(method.queue.ptr) == 8


@pytest.mark.parametrize("name", ["moco", "ancor"])
def test_state_dict_roundtrip_resumes_exactly(name):
    method, batch = make(name).train(), fixed_batch()
    method.training_step(batch)
    state = method.state_dict()
    assert {"key_backbone.features.0.weight", "key_projector.2.weight"} <= set(state)
    assert {"queue.queue", "queue.ptr"} <= set(state) or {"queues.queue", "queues.ptr"} <= set(state)
    clone = make(name, seed=1)
    clone.load_state_dict(state, strict=True)
    method.eval(), clone.eval()
    for layer in method.layers:
        torch.testing.assert_close(clone.embed(batch["images"], layer), method.embed(batch["images"], layer),
                                   rtol=0, atol=0)
    method.train(), clone.train()
    torch.testing.assert_close(clone.training_step(batch)[0], method.training_step(batch)[0], rtol=0, atol=0)
    for k, v in method.state_dict().items():
        assert torch.equal(clone.state_dict()[k], v), k


def test_build_and_layers():
    ancor = make("ancor")
    assert isinstance(ancor, ANCOR) and ancor.views == 2 and ancor.default_layer == "backbone"
    assert ancor.queues.queue.shape == (4, 16, 128)
    images = fixed_batch()["images"]
    shapes = {layer: tuple(ancor.eval().embed(images, layer).shape) for layer in ancor.layers}
    assert shapes == {"backbone": (8, 120), "head": (8, 128), "logits": (8, 4)}
    moco = make("moco")
    assert isinstance(moco, MoCo) and moco.labels == "none" and moco.queue.queue.shape == (16, 128)
    assert {layer: tuple(moco.eval().embed(images, layer).shape) for layer in moco.layers} == {
        "backbone": (8, 120), "head": (8, 128)}
    assert all(m.meta["paper"] and m.meta["deviations"] for m in (ancor, moco))
    with pytest.raises(ConfigError, match="methods.ancor.params.metric is 'cos'"):
        make("ancor", metric="cos")
    with pytest.raises(ConfigError, match="methods.ancor.params"):
        make("ancor", head="fork")


def test_ancor_step_under_autocast_keeps_float32_queues():
    method, batch = make("ancor").train(), fixed_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = method.training_step(batch)
    assert torch.isfinite(loss) and method.queues.queue.dtype == torch.float32
    loss.backward()
