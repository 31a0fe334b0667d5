"""Momentum-contrast building blocks: momentum update, queues, angular normalisation, shuffle-BN."""

import copy
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fgbench.models.momentum import (ClassQueues, Queue, angular_normalise, batch_shuffle, batch_unshuffle,
                                     concat_all_gather, momentum_update)

S = 1 / math.sqrt(10)


def test_angular_normalise_by_hand():
    # v=(3,4): N(v)=(.6,.8); w=(0,2): N(w)=(0,1); N(v)-N(w)=(.6,-.2), norm sqrt(.4) -> (3,-1)/sqrt(10)
    # v=(1,0), w=(1,1): (1-1/sqrt2, -1/sqrt2), normalised -> (sin 22.5deg, -cos 22.5deg)
    v = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    w = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    expected = torch.tensor([[3 * S, -S], [0.38268343, -0.92387953]])
    torch.testing.assert_close(angular_normalise(v, w), expected)


def test_angular_normalise_per_sample_weight_on_queue_entries():
    # v (B=2, K=2, D=2), w (B, D): row b of v is normalised around w[b]
    v = torch.tensor([[[3.0, 4.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 5.0]]])
    w = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[[3 * S, -S], [r, -r]],  # (1,0) - (0,1) = (1,-1)
                             [[0.38268343, -0.92387953], [-0.92387953, 0.38268343]]])  # (0,1) - (r,r)
    torch.testing.assert_close(angular_normalise(v, w), expected)
    torch.testing.assert_close(angular_normalise(v, w.unsqueeze(1)), expected)  # explicit broadcast


def keys(n, start=0, dim=2):
    """Distinct recognisable keys: row i is (start + i) * (1, 10)."""
    return (torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1) * torch.tensor([1.0, 10.0]))[:, :dim]


def test_queue_starts_as_unit_vectors_and_wraps():
    torch.manual_seed(0)
    q = Queue(4, 2)
    assert q.queue.shape == (4, 2) and q.queue.dtype == torch.float32 and q.ptr.dtype == torch.long
    torch.testing.assert_close(q.queue.norm(dim=1), torch.ones(4))
    q.enqueue(keys(3, 1))  # k1 k2 k3 at 0..2
    assert int(q.ptr) == 3
    q.enqueue(keys(3, 4))  # k4 at 3, then wraps: k5 at 0, k6 at 1
    assert int(q.ptr) == 2
    torch.testing.assert_close(q.queue, torch.stack([keys(1, 5)[0], keys(1, 6)[0], keys(1, 3)[0], keys(1, 4)[0]]))
    q.enqueue(keys(6, 10).half())  # more keys than slots: k10..k15 at 2,3,0,1,2,3 -> k12..k15 at 0..3
    assert int(q.ptr) == 0 and q.queue.dtype == torch.float32
    torch.testing.assert_close(q.queue, keys(4, 12))
    q.enqueue(keys(5, 20))  # from 0: k20..k24 at 0,1,2,3,0 -> k24 k21 k22 k23
    assert int(q.ptr) == 1
    torch.testing.assert_close(q.queue, keys(5, 20)[[4, 1, 2, 3]])
    q.enqueue(keys(6, 30))  # from 1: k30..k35 at 1,2,3,0,1,2 -> k33 k34 k35 k32
    assert int(q.ptr) == 3
    torch.testing.assert_close(q.queue, keys(6, 30)[[3, 4, 5, 2]])


def test_class_queues_per_class_ring_buffers():
    torch.manual_seed(0)
    cq = ClassQueues(3, 3, 2)
    initial = cq.queue.clone()
    assert cq.queue.shape == (3, 3, 2) and cq.ptr.tolist() == [0, 0, 0]
    torch.testing.assert_close(cq.queue.norm(dim=2), torch.ones(3, 3))
    k = keys(5)  # k0..k4
    cq.enqueue(k, torch.tensor([0, 1, 0, 1, 1]))
    assert cq.ptr.tolist() == [2, 0, 0]  # class 1 filled its 3 slots and wrapped to 0
    torch.testing.assert_close(cq.queue[0, :2], k[[0, 2]])
    torch.testing.assert_close(cq.queue[0, 2], initial[0, 2])
    torch.testing.assert_close(cq.queue[1], k[[1, 3, 4]])
    torch.testing.assert_close(cq.queue[2], initial[2])  # no key of class 2: untouched
    k2 = keys(3, 5)  # k5 k6 (class 0), k7 (class 1)
    cq.enqueue(k2, torch.tensor([0, 0, 1]))
    assert cq.ptr.tolist() == [1, 1, 0]  # class 0: k5 at 2, then k6 wraps to 0
    torch.testing.assert_close(cq.queue[0], torch.stack([k2[1], k[2], k2[0]]))
    torch.testing.assert_close(cq.queue[1], torch.stack([k2[2], k[3], k[4]]))
    entries = cq.entries(torch.tensor([1, 0, 2, 1]))
    assert entries.shape == (4, 3, 2)
    for i, c in enumerate([1, 0, 2, 1]):
        torch.testing.assert_close(entries[i], cq.queue[c])


def test_class_queues_store_float32_and_live_in_the_state_dict():
    cq = ClassQueues(2, 4, 2)
    cq.enqueue(keys(2).to(torch.bfloat16), torch.tensor([1, 1]))
    assert cq.queue.dtype == torch.float32
    torch.testing.assert_close(cq.queue[1, :2], keys(2))
    assert set(cq.state_dict()) == {"queue", "ptr"}
    other = ClassQueues(2, 4, 2)
    other.load_state_dict(cq.state_dict())
    assert torch.equal(other.queue, cq.queue) and torch.equal(other.ptr, cq.ptr)


def _net():
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def test_momentum_update_parameters_and_bn_buffers():
    torch.manual_seed(0)
    key, query = _net(), _net()
    query(torch.randn(8, 2))  # train mode: running stats and num_batches_tracked move
    key(torch.randn(8, 2) + 3.0)
    key(torch.randn(8, 2) + 3.0)
    old_key = {k: v.clone() for k, v in key.state_dict().items()}
    q = query.state_dict()
    assert not torch.allclose(old_key["1.running_mean"], q["1.running_mean"])
    momentum_update(key, query, 0.9)
    new = key.state_dict()
    torch.testing.assert_close(new["0.weight"], 0.9 * old_key["0.weight"] + 0.1 * q["0.weight"])
    torch.testing.assert_close(new["1.running_mean"], 0.9 * old_key["1.running_mean"] + 0.1 * q["1.running_mean"])
    torch.testing.assert_close(new["1.running_var"], 0.9 * old_key["1.running_var"] + 0.1 * q["1.running_var"])
    assert int(new["1.num_batches_tracked"]) == int(q["1.num_batches_tracked"]) == 1  # copied, not averaged
    assert key[0].weight is not None and torch.equal(key[0].weight.data, new["0.weight"])  # in place


def test_momentum_update_needs_matching_modules():
    with pytest.raises(ValueError, match=r"only in query \['2.bias', '2.weight'\]"):
        momentum_update(_net(), nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)), 0.9)


def test_shuffle_helpers_are_identities_without_distributed():
    assert not dist.is_initialized()
    x = torch.randn(6, 3)
    rng = torch.get_rng_state()
    shuffled, idx = batch_shuffle(x)
    assert torch.equal(shuffled, x) and torch.equal(idx, torch.arange(6))
    assert torch.equal(batch_unshuffle(2 * shuffled, idx), 2 * x)
    assert torch.equal(concat_all_gather(x), x)
    assert torch.equal(torch.get_rng_state(), rng)  # no random draw: runs stay reproducible


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)  # rank 0's permutation must win
    x = torch.arange(4.0).unsqueeze(1) + 10 * rank  # rank r holds 10r .. 10r+3
    shuffled, idx = batch_shuffle(x)
    back = batch_unshuffle(shuffled * 2, idx)  # a per-sample "key encoder"
    gathered = concat_all_gather(shuffled)
    torch.save({"x": x, "shuffled": shuffled, "back": back, "gathered": gathered}, out / f"{rank}.pt")
    dist.destroy_process_group()


def test_shuffle_helpers_under_ddp(tmp_path):
    """Two gloo ranks: the shuffled slices partition the global batch, and unshuffling gives each
    rank back the outputs of its own samples in order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, tmp_path), nprocs=2, start_method="fork")  # no re-import
    r = [torch.load(tmp_path / f"{i}.pt") for i in range(2)]
    everything = torch.cat([r[0]["x"], r[1]["x"]])
    assert torch.equal(r[0]["gathered"], r[1]["gathered"])
    assert torch.equal(torch.cat([r[0]["shuffled"], r[1]["shuffled"]]), r[0]["gathered"])
    assert torch.equal(r[0]["gathered"].flatten().sort().values, everything.flatten())
    assert not torch.equal(r[0]["gathered"], everything)  # a real permutation (8! orders; seed 0)
    for rank in range(2):
        assert torch.equal(r[rank]["back"], 2 * r[rank]["x"])


# --- BatchNorm in groups (train.bn_group_size): one GPU's BatchNorm of the releases, emulated ---
# MoCo, ANCOR and SCGM-A train on 4 GPUs with 64 images each (facebookresearch/moco main_moco.py:
# batch 256 over the GPUs; guybuk/ANCOR and nijingchao/SCGM the same), so every BatchNorm sees 64.


def _grouped(layer, size):
    from fgbench.distributed import group_batchnorm

    return group_batchnorm(layer, size)


@pytest.mark.parametrize("layer, shape", [(nn.BatchNorm2d(3), (256, 3, 5, 5)), (nn.BatchNorm1d(4), (256, 4))])
def test_grouped_batchnorm_equals_each_group_alone(layer, shape):
    torch.manual_seed(0)
    nn.init.uniform_(layer.weight, 0.5, 2.0)
    nn.init.uniform_(layer.bias, -1.0, 1.0)
    x = torch.randn(shape) * torch.linspace(1, 3, shape[0]).view(-1, *[1] * (len(shape) - 1)) + 2
    alone = [copy.deepcopy(layer).train() for _ in range(4)]
    expected = torch.cat([bn(part) for bn, part in zip(alone, x.split(64))])
    grouped = _grouped(copy.deepcopy(layer), 64).train()
    torch.testing.assert_close(grouped(x), expected)
    # running statistics: one step with the groups' mean of means and of unbiased variances,
    # what averaging the four GPUs' running statistics gives
    torch.testing.assert_close(grouped.running_mean, torch.stack([bn.running_mean for bn in alone]).mean(0))
    torch.testing.assert_close(grouped.running_var, torch.stack([bn.running_var for bn in alone]).mean(0))
    assert grouped.num_batches_tracked.item() == 1
    grouped.eval()  # eval mode: plain BatchNorm with the running statistics
    plain = copy.deepcopy(layer).eval()
    plain.load_state_dict(grouped.state_dict())
    torch.testing.assert_close(grouped(x), plain(x))


def test_grouped_batchnorm_is_plain_batchnorm_up_to_the_group_size():
    """A batch no larger than a group (the CPU default config's 112 under a group of 128, say) is
    normalised exactly as before: same output, same running statistics."""
    torch.manual_seed(1)
    x = torch.randn(64, 3, 4, 4)
    plain, grouped = nn.BatchNorm2d(3), _grouped(nn.BatchNorm2d(3), 64)
    assert torch.equal(grouped(x), plain(x)) and torch.equal(grouped.running_var, plain.running_var)
    assert torch.equal(grouped.state_dict()["running_mean"], plain.state_dict()["running_mean"])


def test_uneven_batch_is_cut_into_near_equal_groups():
    torch.manual_seed(2)
    x = torch.randn(130, 2)
    out = _grouped(nn.BatchNorm1d(2, affine=False), 64)(x)
    for part in (out[:44], out[44:87], out[87:]):  # ceil(130/64) = 3 groups: 44, 43, 43
        torch.testing.assert_close(part.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(part.var(0, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)


def test_keys_are_shuffled_across_groups_in_one_process():
    """With grouped BatchNorm, MoCo's key batch is permuted before the key encoder and restored
    after it (each group normalises a random mix, as each GPU does); without groups no random draw."""
    from fgbench.distributed import splits_batch

    encoder = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert not splits_batch(encoder, 256)
    _grouped(encoder, 64)
    assert splits_batch(encoder, 256) and not splits_batch(encoder, 64) and not splits_batch(encoder.eval(), 256)
    torch.manual_seed(3)
    x = torch.randn(256, 3)
    shuffled, idx = batch_shuffle(x, grouped=True)
    assert not torch.equal(shuffled, x) and torch.equal(shuffled[idx], x)
    assert torch.equal(batch_unshuffle(2 * shuffled, idx), 2 * x)


def test_moco_keys_with_grouped_batchnorm():
    """The loop's conversion on a whole method: the key encoder's groups see a random mix of the
    key batch (the permutation drawn from the global RNG), and the keys come back in batch order;
    a training step runs."""
    from fgbench.distributed import group_batchnorm
    from fgbench.methods import build_method
    from fgbench.models import get_backbone

    torch.manual_seed(4)
    method = group_batchnorm(build_method("moco", get_backbone("small_cnn"), num_classes=1, num_samples=32, epochs=1,
                                          params={"queue_size": 64}), 8).train()
    x = torch.rand(32, 1, 28, 28)
    key_encoder = nn.Sequential(method.key_backbone, method.key_projector)
    torch.manual_seed(5)
    keys = method.keys(x)
    torch.manual_seed(5)
    perm = torch.randperm(32)
    with torch.no_grad():
        torch.testing.assert_close(keys, key_encoder(x[perm])[torch.argsort(perm)])
        assert not torch.allclose(keys, key_encoder(x), atol=1e-3)  # unshuffled groups differ
    loss, _ = method.training_step({"images": torch.rand(32, 1, 28, 28), "view2": x, "labels": torch.zeros(32, dtype=torch.long)})
    loss.backward()
    assert torch.isfinite(loss)
