"""STML: k-reciprocal neighbours and the contextualised similarity on a hand-written toy set, the
relaxed contrastive and KL losses against explicit loops, the EMA teacher, nearest-neighbour
batches, and one run through the training loop."""

import copy
import math

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, write_fashion
from fgbench import config as fgconfig
from fgbench.data import prepare
from fgbench.errors import ConfigError
from fgbench.methods import build_method
from fgbench.methods.stml import (STML, NNBatchSampler, contextual_similarity, distance_distillation,
                                  k_reciprocal_neighbours, nearest_neighbours, relaxed_contrastive_loss)
from fgbench.models import get_backbone
from fgbench.train import train

# Six points on a line (positions; also used as angles in degrees on the unit circle, where the
# chord length grows with the angle difference, so the neighbour order is the same):
#   point      0    1    2    3    4    5
#   position   0   10   30   70  100  150
# top-3 (self first): N(0) = {0,1,2}  N(1) = {1,0,2}  N(2) = {2,1,0}
#                     N(3) = {3,4,2}  N(4) = {4,3,5}  N(5) = {5,4,3}
# k-reciprocal:       R(0) = R(1) = R(2) = {0,1,2}; R(3) = {3,4} (3 is not in N(2));
#                     R(4) = {3,4,5}; R(5) = {4,5} (5 is not in N(3))
POSITIONS = [0.0, 10.0, 30.0, 70.0, 100.0, 150.0]
RECIPROCAL = [{0, 1, 2}, {0, 1, 2}, {0, 1, 2}, {3, 4}, {3, 4, 5}, {4, 5}]


def make(**params):
    torch.manual_seed(0)
    params = {"embedding_dim": 16, "g_dim": 32, **params}
    return build_method("stml", get_backbone("small_cnn", width=1), num_classes=4, num_samples=32, params=params)


def images(n=32, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_k_reciprocal_neighbours_on_a_line():
    x = torch.tensor(POSITIONS)
    v, topk = k_reciprocal_neighbours(-(x[:, None] - x[None, :]).abs(), 3)
    assert topk.tolist() == [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 4, 2], [4, 3, 5], [5, 4, 3]]
    assert [set(torch.nonzero(row).flatten().tolist()) for row in v] == RECIPROCAL
    assert torch.equal(v, v.T)


def test_contextual_similarity_against_hand_computation():
    angles = torch.tensor(POSITIONS) * math.pi / 180
    t = 3.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)  # the teacher is normalised first
    sigma = 3.0
    w = contextual_similarity(t, torch.arange(6), sigma=sigma, k=3)
    # W~_C[i, j] = |R(i) & R(j)| / |R(i)| for j in R(i): rows 0-2 are 1 on {0,1,2};
    # row 3: 1, 1 on {3,4}; row 4: 2/3, 1, 2/3 on {3,4,5}; row 5: 1, 1 on {4,5}.
    # Query expansion over the round(3/2) = 2 best-ranked: W^_C[i] = mean(W~_C[i], W~_C[nn_2(i)])
    # with nn_2 = 1, 0, 1, 4, 3, 4:
    #   rows 0-2: [1, 1, 1, 0, 0, 0]; rows 3, 4: [0, 0, 0, 5/6, 1, 1/3]; row 5: [0, 0, 0, 1/3, 1, 5/6]
    # W_C = (W^_C + W^_C^T) / 2:
    w_c = torch.tensor([
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 5 / 6, 11 / 12, 1 / 3],
        [0, 0, 0, 11 / 12, 1, 2 / 3],
        [0, 0, 0, 1 / 3, 2 / 3, 5 / 6],
    ])
    w_p = torch.tensor([[math.exp(-(2 - 2 * math.cos(a - b)) / sigma) for b in angles.tolist()] for a in angles.tolist()])
    torch.testing.assert_close(w, (w_p + w_c) / 2)
    torch.testing.assert_close(contextual_similarity(t, torch.arange(6), sigma=sigma, k=3, lam=0.0), w_p)
    torch.testing.assert_close(contextual_similarity(t, torch.arange(6), sigma=sigma, k=3, lam=1.0), w_c)


def test_the_two_views_of_an_image_rank_first():
    """Views of one image are k-reciprocal neighbours however far apart the teacher puts them."""
    degrees = torch.tensor([0.0, 10.0, 90.0, 180.0, 200.0, 270.0])  # view 2 of image i is point i + 3
    t = torch.stack([torch.cos(degrees * math.pi / 180), torch.sin(degrees * math.pi / 180)], 1)
    index = torch.tensor([0, 1, 2, 0, 1, 2])
    w = contextual_similarity(t, index, sigma=1.0, k=2)
    same = (index[:, None] == index[None, :]).float()
    w_p = torch.exp(-torch.cdist(t, t).pow(2))
    torch.testing.assert_close(w, (w_p + same) / 2)
    assert w[0, 3].item() == pytest.approx((math.exp(-4.0) + 1) / 2)


def test_relaxed_contrastive_loss_against_explicit_loop():
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 0.8, 0.1, 0.5], [0.8, 1.0, 0.3, 0.0], [0.1, 0.3, 1.0, 0.6], [0.5, 0.0, 0.6, 1.0]],
                     dtype=torch.float64)
    delta = 1.5
    pts = s.tolist()
    n = len(pts)
    dist = [[math.dist(a, b) for b in pts] for a in pts]
    expected = 0.0
    for i in range(n):
        row_mean = sum(dist[i]) / n  # the zero diagonal counts in the mean
        for j in range(n):
            if i != j:
                d = dist[i][j] / row_mean
                expected += w[i, j].item() * d**2 + (1 - w[i, j].item()) * max(0.0, delta - d) ** 2
    expected /= n * (n - 1)
    loss = relaxed_contrastive_loss(s, w, delta)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.isfinite(s.grad).all()  # the zero diagonal does not poison the gradient


def test_relaxed_contrastive_loss_by_hand():
    """Points (0,0), (3,0), (0,4): distances 3, 4, 5; row means (with the zero diagonal) 7/3, 8/3,
    3, so d = [[0, 9/7, 12/7], [9/8, 0, 15/8], [4/3, 5/3, 0]]. Only 0-1 is a positive pair;
    delta = 2: pulls (9/7)^2 + (9/8)^2, pushes (2 - 12/7)^2 + (2 - 15/8)^2 + (2 - 4/3)^2 + (2 - 5/3)^2,
    over 3 * 2 ordered pairs."""
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    expected = ((9 / 7) ** 2 + (9 / 8) ** 2 + (2 / 7) ** 2 + (1 / 8) ** 2 + (2 / 3) ** 2 + (1 / 3) ** 2) / 6
    assert relaxed_contrastive_loss(s, w, delta=2.0).item() == pytest.approx(expected, rel=1e-12)
    assert relaxed_contrastive_loss(s, w, delta=1.0).item() == pytest.approx(((9 / 7) ** 2 + (9 / 8) ** 2) / 6, rel=1e-12)


def test_kl_term_is_zero_when_the_heads_agree_and_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    s_f = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert distance_distillation(s_f, s_f.detach().clone()).item() == pytest.approx(0.0, abs=1e-12)
    # same distances up to scale and rotation: still zero (distances are row-normalised)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    assert distance_distillation(s_f, 2.5 * s_f.detach() @ q).item() == pytest.approx(0.0, abs=1e-12)

    s_g = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)

    def normalised(x):
        d = [[math.dist(a, b) for b in x] for a in x]
        return [[v / (sum(row) / len(row)) for v in row] for row in d]
    df, dg = normalised(s_f.tolist()), normalised(s_g.tolist())
    expected = 0.0
    for i in range(6):
        zf, zg = sum(math.exp(-v) for v in df[i]), sum(math.exp(-v) for v in dg[i])
        for j in range(6):
            p, q_ = math.exp(-dg[i][j]) / zg, math.exp(-df[i][j]) / zf
            expected += p * math.log(p / q_)
    loss = distance_distillation(s_f, s_g)
    assert loss.item() == pytest.approx(expected / 6, rel=1e-10)
    loss.backward()
    assert s_g.grad is None and s_f.grad.abs().sum() > 0  # g teaches f, not the other way


def test_training_step_is_the_hand_assembled_loss_then_the_ema_update():
    method = make(momentum=0.9, sigma=2.0, delta=0.8, nn_per_seed=3, kl_weight=0.5).train()
    view1, view2 = images(8, 1), images(8, 2)
    batch = {"images": view1, "view2": view2, "labels": torch.zeros(8, dtype=torch.long), "index": torch.arange(8)}
    before = copy.deepcopy(method)
    loss, logs = method.training_step(batch)

    both, index = torch.cat([view1, view2]), torch.arange(8).repeat(2)
    s_f, s_g = before.student(both)
    w = contextual_similarity(before.teacher(both), index, sigma=2.0, k=6)  # k = 3 per seed x 2 views
    rc = (relaxed_contrastive_loss(s_f, w, 0.8) + relaxed_contrastive_loss(s_g, w, 0.8)) / 2
    expected = rc + 0.5 * distance_distillation(s_f, s_g)
    torch.testing.assert_close(loss, expected)
    assert logs["rc_loss"] == pytest.approx(rc.item(), rel=1e-5)

    # after the loss: theta_t = 0.9 theta_t + 0.1 theta_s with the student as it was (the optimizer
    # has not stepped yet), matched by name; BN running statistics too; counters copied
    student = dict(method.backbone.state_dict(), **{f"g.{k}": v for k, v in method.head_g.state_dict().items()})
    old = dict(before.teacher_backbone.state_dict(), **{f"g.{k}": v for k, v in before.teacher_head_g.state_dict().items()})
    new = dict(method.teacher_backbone.state_dict(), **{f"g.{k}": v for k, v in method.teacher_head_g.state_dict().items()})
    assert any("running_mean" in k for k in new)
    for key, value in new.items():
        if key.endswith("num_batches_tracked"):
            assert torch.equal(value, student[key]) and value.item() == 1
        else:
            torch.testing.assert_close(value, 0.9 * old[key] + 0.1 * student[key])


def test_teacher_is_frozen_in_eval_mode_and_left_out_of_model_pt():
    method = make().train()
    assert method.training and not method.teacher_backbone.training and not method.teacher_head_g.training
    batch = {"images": images(8, 1), "view2": images(8, 2), "index": torch.arange(8)}
    loss, _ = method.training_step(batch)
    loss.backward()
    teacher = [*method.teacher_backbone.parameters(), *method.teacher_head_g.parameters()]
    assert teacher and all(not p.requires_grad and p.grad is None for p in teacher)
    assert all(p.grad is not None for p in (*method.head.parameters(), *method.head_g.parameters()))
    assert any(k.startswith("teacher_") for k in method.state_dict())  # checkpoints resume it
    saved = method.inference_state()
    assert saved and not any(k.startswith("teacher_") for k in saved)
    groups = make(head_lr_scale=100.0).param_groups()
    assert groups[1]["lr_scale"] == 100.0 and len(groups[1]["params"]) == 4


def test_nearest_neighbours_and_batch_sampler_on_a_toy_embedding():
    # 8 clusters of 3 on a line: offsets 0, 1, 2.5 within a cluster, clusters 10 apart
    x = torch.tensor([10.0 * c + o for c in range(8) for o in (0.0, 1.0, 2.5)]).unsqueeze(1)
    nn = nearest_neighbours(x, 3)
    expected = torch.tensor([[3 * c + a for a in row] for c in range(8) for row in ([0, 1, 2], [1, 0, 2], [2, 1, 0])])
    assert torch.equal(nn, expected)
    assert torch.equal(nearest_neighbours(x, 3, chunk=5), expected)
    dup = torch.cat([x, x[:1]])  # a duplicate of image 0: each copy still lists itself first
    assert nearest_neighbours(dup, 2)[[0, 24], 0].tolist() == [0, 24]

    def batches(seed):
        return list(NNBatchSampler(nn, batch_size=6, generator=torch.Generator().manual_seed(seed)))

    drawn = batches(0)
    assert len(drawn) == 24 // 6
    for batch in drawn:
        assert len(batch) == 6 and all(0 <= i < 24 for i in batch)
        seeds = batch[::3]
        assert len(set(seeds)) == 2  # seeds without replacement
        for s, group in zip(seeds, (batch[:3], batch[3:])):
            assert group == nn[s].tolist()  # the seed, then its neighbours
            assert {i // 3 for i in group} == {s // 3}  # here: the seed's cluster
    assert drawn == batches(0) and drawn != batches(1)
    with pytest.raises(ValueError, match="not a multiple"):
        NNBatchSampler(nn, batch_size=7, generator=torch.Generator())


@pytest.mark.parametrize("nn_encoder", ["teacher", "student"])
def test_epoch_start_builds_nn_batches_from_the_chosen_encoder(nn_encoder):
    method = make(nn_per_seed=4, nn_encoder=nn_encoder).train()
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        method.batch_sampler(8, torch.Generator())
    data = images(32, 3)

    def batches(augment=True):
        assert augment is False
        for start in range(0, 32, 10):
            yield {"images": data[start : start + 10], "labels": torch.zeros(10), "index": torch.arange(start, min(start + 10, 32))}

    method.on_epoch_start(0, batches)
    assert method.training and not method.teacher_backbone.training  # modes restored
    with torch.no_grad():
        encoder = method.teacher(data) if nn_encoder == "teacher" else method.eval().student(data)[1]
    method.train()
    assert torch.equal(method._neighbours, nearest_neighbours(encoder, 4))
    sampler = method.batch_sampler(16, torch.Generator().manual_seed(0))
    assert isinstance(sampler, NNBatchSampler) and len(sampler) == 2
    for batch in sampler:
        assert len(batch) == 16
        for g in range(4):
            assert batch[4 * g : 4 * g + 4] == method._neighbours[batch[4 * g]].tolist()
    with pytest.raises(ConfigError, match="train.batch_size 18 is not a multiple of methods.stml.params.nn_per_seed 4"):
        method.batch_sampler(18, torch.Generator())


def test_bad_parameters():
    with pytest.raises(ConfigError, match="nn_encoder"):
        make(nn_encoder="kmeans")
    assert make(nn_per_seed=2).topk == 4 and make(topk=7).topk == 7
    assert STML.labels == "none" and STML.views == 2 and "no k-means" in " ".join(STML.meta["deviations"])


def test_a_training_run_through_the_loop(tmp_path):
    folder = write_fashion(tmp_path / "fashion", n_train=24, n_test=4)
    data = tmp_path / "data.npz"
    prepare("fashion_mnist", {"root": str(folder), "val_fraction": 0.2, "split_seed": 0, "verify": False}, data)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"]["stml"] = {"params": {"embedding_dim": 16, "g_dim": 32}, "embed_layer": "head"}
    cfg["train"].update(epochs=2, batch_size=40, device="cpu")
    spec = fgconfig.train_spec(fgconfig.validate(cfg), "fashion_mnist", "open_set", "stml", 0)
    train(spec, data, tmp_path / "run")
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert log["epoch"].tolist() == [0, 1] and log["loss"].notna().all() and "kl_loss" in log
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=False)["state_dict"]
    assert "head.weight" in saved and not any(k.startswith("teacher_") for k in saved)


def test_heads_sit_on_the_sum_of_average_and_max_pooling_as_in_the_code():
    # tjddus9597/STML-CVPR22 code/net/resnet.py: x = self.model.gap(x) + self.model.gmp(x)
    torch.manual_seed(0)
    backbone = get_backbone("resnet18")
    net = copy.deepcopy(backbone.net).eval()
    method = build_method("stml", backbone, num_classes=4, num_samples=8, params={"embedding_dim": 8, "g_dim": 16}).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(net.children())[:-2])(x)  # up to layer4
        expected = trunk.mean((2, 3)) + trunk.amax((2, 3))
        torch.testing.assert_close(method.embed(x, "backbone"), expected)
        torch.testing.assert_close(method.teacher_backbone(x), expected)


def test_max_pooling_is_refused_on_a_backbone_without_a_global_pool():
    with pytest.raises(ConfigError, match="pooling 'avg_max' needs a torchvision backbone"):
        make(pooling="avg_max")
