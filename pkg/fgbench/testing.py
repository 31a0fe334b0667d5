"""Contract checks of a Method class, for plug-in authors and for fgbench's own methods.

One call per class from pytest::

    from fgbench.testing import check_method

    def test_my_loss_keeps_the_method_contract():
        check_method(MyLoss, {"margin": 0.2})

or one test per check: ``@pytest.mark.parametrize("check", CHECKS)`` and ``check(MyLoss, ...)``.
Each check raises ``AssertionError`` saying what broke. What they run is what fgbench does with
a method (``fgbench.train.loop``): build it from config params, call ``on_epoch_start`` with the
training set's batches at every epoch, then ``training_step`` and an optimiser step; embed with
``embed(images, layer)`` in eval mode; save ``state_dict`` in checkpoints and
``inference_state`` in ``model.pt``. The training set is one fixed batch (``fixed_batch``:
28x28 grey images whose class is a bright row) on a tiny backbone (``SmallCNN``), so a check
takes about a second on a CPU. The optimiser is Adam over ``param_groups()``; a method's own
``batch_sampler`` is not exercised (the training set is that one batch).

- ``check_builds``: the class's declarations are valid, config validation accepts ``params``
  (names and types, as ``fgbench.config.validate``) and the class builds from them.
- ``check_training_step``: a finite scalar loss with float logs, a gradient for every trainable
  parameter, and a lower loss after a few optimiser steps on the batch (the loss averaged over
  a few seeded draws, for losses that mine or sample). Training-only buffers (queues,
  pseudo-labels) are restored after each step: on one fixed batch a queue would fill with the
  batch's own keys, so the loss would not measure learning.
- ``check_embed_layers``: every declared layer embeds B images as a finite (B, D) float tensor
  (D the same for any B); an unknown layer is refused.
- ``check_state_roundtrip``: a second instance loading the (trained) ``state_dict`` embeds
  identically, and so does one loading ``inference_state``, which holds no training-only entry.
- ``check_resume``: k epochs, a checkpoint through ``torch.save``, a fresh instance restored
  from it, the remaining epochs: the same weights and embeddings, bit for bit, as an
  uninterrupted run (the loop seeds every epoch from (seed, epoch), as here).
"""

import copy
import io
from dataclasses import dataclass, field

import torch

from .config import _check_params
from .config_checks import check_param_types
from .errors import ConfigError
from .methods.base import Method, get_method_class, instantiate
from .models.backbones import SmallCNN
from .train.loop import epoch_seed, seed_everything

LABELS = ("coarse", "supervised", "none")


def fixed_batch(n: int = 32, classes: int = 4, *, channels: int = 1, size: int = 28, views: int = 1, seed: int = 0) -> dict:
    """A training batch whose class is visible: noise plus a brighter row at a class-specific
    height; with ``views == 2`` a second, flipped and noised view (``view2``)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n // classes)
    # faint enough that an untrained network mixes the classes (a triplet loss has triplets to fix)
    images = torch.rand(len(labels), channels, size, size, generator=g) * 0.6
    rows = (labels * (size - 4) // classes + 2).long()
    images[torch.arange(len(labels)), :, rows, :] += 0.3
    batch = {"images": images, "labels": labels, "index": torch.arange(len(labels))}
    if views == 2:
        batch["view2"] = images.flip(-1) + 0.05 * torch.rand(images.shape, generator=g)
    return batch


@dataclass
class Contract:
    """The class under test and what it is built and trained with."""

    cls: type
    params: dict = field(default_factory=dict)
    backbone: object = None  # callable() -> a fresh backbone with out_dim; None: SmallCNN on 28x28 grey
    num_classes: int = 4
    batch_size: int = 32
    epochs: int = 2  # check_resume: interrupted after epochs - 1
    steps: int = 3  # optimiser steps per epoch

    def build(self, seed: int = 0) -> Method:
        torch.manual_seed(seed)
        backbone = self.backbone() if self.backbone is not None else SmallCNN(width=1)
        return instantiate(self.cls, backbone, num_classes=self.num_classes, num_samples=self.batch_size,
                           epochs=self.epochs, params=self.params)

    def batch(self) -> dict:
        return fixed_batch(self.batch_size, self.num_classes, views=self.cls.views)


def _contract(method, params=None, **options) -> Contract:
    cls = get_method_class(method) if isinstance(method, str) else method
    return Contract(cls, dict(params or {}), **options)


def _batches(batch: dict):
    """The ``batches`` argument of ``on_epoch_start``: the training set is the one batch."""
    return lambda augment=True: iter([batch])


def _optimizer(method: Method):
    return torch.optim.Adam(method.param_groups(), lr=1e-3)


def _step(method, optimizer, batch) -> float:
    loss, logs = method.training_step(batch)
    assert loss.ndim == 0 and torch.isfinite(loss), f"training_step gave the loss {loss!r}; expected a finite scalar"
    assert all(isinstance(v, float) for v in logs.values()), f"training_step's logs must be floats, got {logs!r}"
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _train(c: Contract, method, optimizer, start: int, stop: int) -> None:
    """Epochs ``start`` to ``stop - 1`` as the training loop runs them, on the fixed batch."""
    batch = c.batch()
    for epoch in range(start, stop):
        seed_everything(epoch_seed(0, epoch))
        method.train()
        method.on_epoch_start(epoch, _batches(batch))
        for _ in range(c.steps):
            _step(method, optimizer, batch)


@torch.no_grad()
def _embeddings(method, images) -> dict:
    """{layer: embedding}, each under the same seed (sampled predictions, e.g. vMF's, repeat)."""
    method.eval()
    out = {}
    for layer in method.layers:
        torch.manual_seed(0)
        out[layer] = method.embed(images, layer)
    return out


def _assert_same_embeddings(got: dict, expected: dict, what: str) -> None:
    for layer, value in expected.items():
        assert torch.equal(got[layer], value), f"{what}: layer '{layer}' embeds differently"


def check_builds(method, params=None, **options) -> None:
    c = _contract(method, params, **options)
    cls = c.cls
    assert isinstance(cls, type) and issubclass(cls, Method), f"{cls!r} is not a subclass of fgbench.methods.Method"
    assert cls.labels in LABELS, f"{cls.__name__}.labels is {cls.labels!r}; expected one of {LABELS}"
    assert cls.layers and all(isinstance(layer, str) for layer in cls.layers), f"{cls.__name__}.layers must name layers"
    assert cls.default_layer in cls.layers, f"{cls.__name__}.default_layer {cls.default_layer!r} is not in layers"
    assert cls.views in (1, 2), f"{cls.__name__}.views is {cls.views!r}; expected 1 or 2"
    assert isinstance(cls.training_only, tuple), f"{cls.__name__}.training_only must be a tuple of key prefixes"
    name = cls.name or cls.__name__
    _check_params(name, c.params, cls)  # what config validation says about methods.<name>.params
    check_param_types(name, c.params, cls)
    assert isinstance(c.build(), cls)


def _mean_loss(method, batch, draws: int = 4) -> float:
    """The loss on ``batch`` averaged over ``draws`` seeded draws (mining, sampling), with every
    parameter and buffer (queues, BatchNorm statistics) put back afterwards."""
    state = copy.deepcopy(method.state_dict())
    losses = []
    with torch.no_grad():
        for draw in range(draws):
            torch.manual_seed(draw)
            losses.append(method.training_step(batch)[0].item())
    method.load_state_dict(state)
    return sum(losses) / draws


def check_training_step(method, params=None, **options) -> None:
    c = _contract(method, params, **options)
    method, batch = c.build().train(), c.batch()
    method.on_epoch_start(0, _batches(batch))
    loss, _ = method.training_step(batch)
    loss.backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without a gradient from training_step: {missing}"
    optimizer = _optimizer(method)
    training_only = {n: b.clone() for n, b in method.named_buffers() if n.startswith(method.training_only)}
    before = _mean_loss(method, batch)
    for step in range(2 * c.steps):
        torch.manual_seed(step)
        _step(method, optimizer, batch)
        method.load_state_dict(training_only, strict=False)
    after = _mean_loss(method, batch)
    assert after < before, f"the loss did not decrease on a fixed batch: {before:.6g} before {2 * c.steps} steps, {after:.6g} after"


def check_embed_layers(method, params=None, **options) -> None:
    c = _contract(method, params, **options)
    method, images = c.build(), c.batch()["images"]
    full, half = _embeddings(method, images), _embeddings(method, images[: len(images) // 2])
    for layer in method.layers:
        value = full[layer]
        assert isinstance(value, torch.Tensor) and value.is_floating_point(), f"layer '{layer}' gives {type(value)}"
        assert value.ndim == 2 and value.shape[0] == len(images) and value.shape[1] > 0, (
            f"layer '{layer}' embeds {len(images)} images as shape {tuple(value.shape)}; expected ({len(images)}, D)")
        assert half[layer].shape == (len(images) // 2, value.shape[1]), f"layer '{layer}': D changes with the batch size"
        assert torch.isfinite(value).all(), f"layer '{layer}' gives non-finite values"
    try:
        method.embed(images, "no_such_layer")
    except ConfigError:
        return
    raise AssertionError("embed(images, 'no_such_layer') must raise ConfigError (use self.check_layer(layer))")


def check_state_roundtrip(method, params=None, **options) -> None:
    c = _contract(method, params, **options)
    method = c.build()
    _train(c, method, _optimizer(method), 0, 1)  # trained: BatchNorm statistics and buffers set
    images = c.batch()["images"]
    expected = _embeddings(method, images)
    clone = c.build(seed=1)
    clone.load_state_dict(method.state_dict(), strict=True)
    _assert_same_embeddings(_embeddings(clone, images), expected, "after load_state_dict")
    saved = method.inference_state()
    kept = [k for k in saved if k.startswith(method.training_only)]
    assert not kept, f"inference_state keeps training-only entries {kept}"
    fresh = c.build(seed=2)
    fresh.load_inference_state(copy.deepcopy(saved))
    _assert_same_embeddings(_embeddings(fresh, images), expected, "after load_inference_state (model.pt)")


def check_resume(method, params=None, **options) -> None:
    c = _contract(method, params, **options)
    straight = c.build()
    _train(c, straight, _optimizer(straight), 0, c.epochs)
    first = c.build()
    optimizer = _optimizer(first)
    _train(c, first, optimizer, 0, c.epochs - 1)
    checkpoint = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
    checkpoint.seek(0)
    saved = torch.load(checkpoint, weights_only=False)
    resumed = c.build(seed=1)
    optimizer = _optimizer(resumed)
    resumed.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    _train(c, resumed, optimizer, c.epochs - 1, c.epochs)
    expected, got = straight.state_dict(), resumed.state_dict()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, f"a resumed run ends with other values than an uninterrupted one in {differ}"
    images = c.batch()["images"]
    _assert_same_embeddings(_embeddings(resumed, images), _embeddings(straight, images), "after resuming")


CHECKS = (check_builds, check_training_step, check_embed_layers, check_state_roundtrip, check_resume)


def check_method(method, params=None, **options) -> None:
    """Every contract check on ``method`` (a Method subclass, or a registered name) built with
    ``params``; ``options`` are ``Contract`` fields (backbone, num_classes, batch_size, epochs, steps)."""
    for check in CHECKS:
        check(method, params, **options)
