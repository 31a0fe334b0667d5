"""LSD (methods/lsd.py): the teacher snapshot, the ramp, the listwise KL against a hand
computation, and the wrapper's delegation to its base loss."""

import copy

import numpy as np
import pytest
import torch

from conftest import class_batch
from fgbench.errors import ConfigError
from fgbench.methods import build_method
from fgbench.models import get_backbone

EPOCHS = 4


def make(**params):
    torch.manual_seed(0)
    return build_method("lsd", get_backbone("small_cnn", width=1), num_classes=4, num_samples=16, epochs=EPOCHS,
                        params=params)


def batch(n=16):
    return class_batch(n)


def perturb(module):
    """Move the student away from the teacher, as a few training steps would."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))


def hand_kl(student, teacher, tau):
    """mean_i sum_j p_ij (log p_ij - log q_ij), p_i = softmax(T_i / tau), q_i = softmax(S_i / tau)."""
    s, t = student.double().numpy(), teacher.double().numpy()
    kls = []
    for i in range(len(s)):
        ls, lt = (s @ s[i]) / tau, (t @ t[i]) / tau  # the whole row, self included
        log_q = ls - np.log(np.exp(ls).sum())
        p = np.exp(lt) / np.exp(lt).sum()
        kls.append((p * (np.log(p) - log_q)).sum())
    return float(np.mean(kls))


def test_epoch_zero_is_the_base_loss_without_teacher():
    method = make(base_loss="multisimilarity").train()
    method.on_epoch_start(0, None)
    assert method.teacher is None and method.ramp() == 0
    loss, logs = method.training_step(batch())
    expected = method.base.loss_fn(method.base(batch()["images"]), batch()["labels"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["kd_weight"] == 0.0 and logs["kd_loss"] == 0.0


def test_ramp():
    method = make(alpha=10.0, tau=0.5).train()
    for epoch in range(EPOCHS):
        method.on_epoch_start(epoch, None)
        assert method.ramp() == epoch / EPOCHS
        _, logs = method.training_step(batch())
        assert logs["kd_weight"] == pytest.approx(epoch / EPOCHS * 10.0 * 0.25)


def test_kl_is_zero_when_teacher_equals_student():
    method = make(base_loss="multisimilarity").train()
    method.on_epoch_start(2, None)
    loss, logs = method.training_step(batch())
    assert logs["kd_weight"] > 0 and logs["kd_loss"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(logs["base_loss"], abs=1e-5)


def test_loss_is_base_plus_weighted_kl_by_hand():
    method = make(base_loss="multisimilarity", alpha=10.0, tau=0.5).train()
    method.on_epoch_start(3, None)
    teacher = copy.deepcopy(method.base)  # the end of epoch 2, as the snapshot
    perturb(method.base)
    loss, logs = method.training_step(batch())
    with torch.no_grad():
        s, t = method.base(batch()["images"]), teacher(batch()["images"])
        base = method.base.loss_fn(s, batch()["labels"]).item()
    kl = hand_kl(s, t, 0.5)
    assert kl > 1e-4  # the student has moved
    assert logs["kd_loss"] == pytest.approx(kl, rel=1e-4)
    assert loss.item() == pytest.approx(base + 3 / EPOCHS * 10.0 * 0.5**2 * kl, rel=1e-5)


def test_teacher_is_a_frozen_snapshot_outside_the_state():
    method = make(base_loss="margin").train()
    keys, params = list(method.state_dict()), list(method.parameters())
    method.on_epoch_start(1, None)
    assert list(method.state_dict()) == keys and list(method.parameters()) == params
    assert all(k.startswith("base.") for k in keys) and "base.loss.beta" in keys
    assert method.teacher not in list(method.modules())
    assert all(not p.requires_grad for p in method.teacher.parameters())
    images = batch()["images"]
    with torch.no_grad():
        before = method.teacher(images)
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    loss, _ = method.training_step(batch())
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(method.teacher(images), before)  # the student moved, not the teacher
        assert not torch.allclose(method.base(images), before)


def test_resumed_snapshot_equals_uninterrupted():
    """A run restored from the checkpoint after epoch 1 snapshots the same teacher at epoch 2."""
    run = make().train()
    run.on_epoch_start(1, None)
    perturb(run.base)  # epoch 1's training
    resumed = make().train()
    resumed.load_state_dict(run.state_dict(), strict=True)
    run.on_epoch_start(2, None)
    resumed.on_epoch_start(2, None)
    with torch.no_grad():
        torch.testing.assert_close(resumed.teacher(batch()["images"]), run.teacher(batch()["images"]))


@pytest.mark.parametrize("bad", ["nope", "moco", "supervised_coarse", "lsd"])
def test_bad_base_loss(bad):
    with pytest.raises(ConfigError, match=f"methods.lsd.params.base_loss is '{bad}'; valid base losses: ") as error:
        make(base_loss=bad)
    valid = str(error.value).split("valid base losses: ")[1].split(", ")
    assert {"contrastive", "margin", "multisimilarity", "normsoftmax", "proxynca", "triplet"} <= set(valid)
    assert not {"lsd", "moco", "ancor", "supervised_coarse", "scgm_a", "scgm_g"} & set(valid)
    assert valid == sorted(valid)


def test_delegates_to_the_base():
    method = make(base_loss="margin", base_params={"beta": 0.6, "embedding_dim": 32})
    assert torch.all(method.base.loss.beta == 0.6)
    assert method.layers == method.base.layers and method.default_layer == method.base.default_layer
    assert method.backbone is method.base.backbone
    groups, base_groups = method.param_groups(), method.base.param_groups()
    assert [g.get("lr_scale") for g in groups] == [None, 50.0]
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(p) for p in g["params"]] for g in base_groups]
    images = batch()["images"]
    method.eval()
    for layer in ("backbone", "head"):
        torch.testing.assert_close(method.embed(images, layer), method.base.embed(images, layer))
    assert method.embed(images, None).shape == (16, 32)
    with pytest.raises(ConfigError, match="methods.margin.params"):
        make(base_loss="margin", base_params={"no_such_argument": 1})
