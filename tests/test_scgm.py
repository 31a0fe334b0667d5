"""SCGM-G and SCGM-A: Sinkhorn-Knopp, the probabilistic model, the losses against hand
computations, the E-step, gradient flow of release_compat, training and checkpoint state."""

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgbench.methods import build_method
from fgbench.methods.scgm import ScgmA, ScgmG, _sinkhorn_log, _sinkhorn_rescaled, sinkhorn_knopp, subclass_log_joint
from fgbench.models import get_backbone


def make(name, seed=0, **params):
    torch.manual_seed(seed)
    params = {"n_subclasses": 6, **({"queue_size": 16} if name == "scgm_a" else {}), **params}
    return build_method(name, get_backbone("small_cnn", width=1), num_classes=4, num_samples=8, params=params)


def fixed_batch():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    images = torch.rand(8, 1, 28, 28, generator=g) * 0.3
    images[torch.arange(8), 0, labels * 6 + 2, :] += 0.7  # the class is visible
    view2 = (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return {"images": images, "view2": view2, "labels": labels, "index": torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])}


def optimize_l_sk_reference(prob, lmd):
    """Asano et al.'s optimize_l_sk (self-label; SCGM's sinkhornknopp.py), transcribed to numpy
    float64: Q = P^lmd, alternate r and c, error checked every 10 iterations."""
    prob = np.asarray(prob, dtype=np.float64).T.copy() ** lmd  # (k, n)
    k, n = prob.shape
    r, c = np.ones((k, 1)) / k, np.ones((n, 1)) / n
    err, cnt = 1e6, 0
    while err > 1e-1:
        r = (1.0 / k) / (prob @ c)
        c_new = (1.0 / n) / (r.T @ prob).T
        if cnt % 10 == 0:
            err = np.nansum(np.abs(c / c_new - 1))
        c = c_new
        cnt += 1
    prob *= np.squeeze(c)
    prob = prob.T * np.squeeze(r)
    return np.nanargmax(prob, axis=1), cnt


# --- Sinkhorn-Knopp ----------------------------------------------------------------------------
def test_sinkhorn_equal_partition_keeps_confident_samples():
    """12 samples all prefer cluster 0; only 4 fit. The 4 confident ones keep it, the others go
    to their second choice: 4/4/4."""
    p = torch.tensor([[0.90, 0.05, 0.05]] * 4 + [[0.50, 0.40, 0.10]] * 4 + [[0.50, 0.10, 0.40]] * 4)
    assert (p.argmax(1) == 0).all()
    labels = sinkhorn_knopp(p.log())
    assert labels.dtype == torch.long
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_sinkhorn_matches_the_original_on_a_random_matrix():
    """Same labels and the same iteration count as the original, on both internal paths."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(300, 10))
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for lam in (25.0, 5.0):
        expected, iterations = optimize_l_sk_reference(prob, lam)
        log_q = lam * torch.from_numpy(np.log(prob))
        for path in (_sinkhorn_rescaled, _sinkhorn_log):
            log_r, its = path(log_q, 0.1, 10_000)
            assert its == iterations > 10
            np.testing.assert_array_equal((log_q + log_r).argmax(1).numpy(), expected)
        got = sinkhorn_knopp(torch.from_numpy(np.log(prob)), lam=lam).numpy()
        np.testing.assert_array_equal(got, expected)
        counts = np.bincount(got, minlength=10)
        assert counts.min() >= 20 and counts.max() <= 40  # near-equal sizes (30 each when exact)
    with pytest.raises(RuntimeError, match="did not converge in 5 iterations"):
        sinkhorn_knopp(torch.from_numpy(np.log(prob)), max_iter=5)


def test_sinkhorn_does_not_underflow_where_the_original_does():
    """log P around -40: P**25 is 0 in float64 and the original fails (all-NaN argmax); the
    result equals that of the matrix shifted into range (labels are shift-invariant)."""
    rng = np.random.default_rng(1)
    log_p = rng.normal(size=(60, 4)) - 40.0
    assert np.exp(log_p * 25).max() == 0.0
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="All-NaN"):
        optimize_l_sk_reference(np.exp(log_p), 25.0)
    shifted = sinkhorn_knopp(torch.from_numpy(log_p + 40.0))
    assert torch.equal(sinkhorn_knopp(torch.from_numpy(log_p)), shifted)
    np.testing.assert_array_equal(shifted.numpy(), optimize_l_sk_reference(np.exp(log_p + 40.0), 25.0)[0])
    with pytest.raises(ValueError, match="finite"):
        sinkhorn_knopp(torch.tensor([[0.0, -float("inf")]]))


def test_sinkhorn_falls_back_to_log_space_when_a_column_underflows():
    """Cluster 2 is e^-1500 below every row's best after the power: the rescaled path gives up,
    the log-space path still fills cluster 2 with the samples that mind least (rows 4, 5)."""
    log_p = torch.tensor([[0.0, -1.0, -62.0], [0.0, -1.0, -61.0], [-1.0, 0.0, -63.0], [-1.0, 0.0, -64.0],
                          [0.0, -1.0, -60.0], [-1.0, 0.0, -60.5]], dtype=torch.float64)
    assert _sinkhorn_rescaled(25 * log_p, 0.1, 10_000) is None
    labels = sinkhorn_knopp(log_p)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


# --- the probabilistic model and the SCGM-G loss -----------------------------------------------
E = [[3.0, 4.0], [-1.0, 0.0]]
MU_Y = [[2.0, 0.0], [0.0, -0.5]]
MU_Z = [[1.0, 1.0], [0.0, 2.0], [-3.0, 0.0]]


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_subclass_log_joint_by_hand():
    tau, y = 0.1, [1, 0]
    got = subclass_log_joint(torch.tensor(E), torch.tensor(y), torch.tensor(MU_Y), torch.tensor(MU_Z), tau)
    assert got.shape == (2, 3)
    for i in range(2):
        sims = [unit(E[i]) @ unit(MU_Z[k]) / tau for k in range(3)]
        for k in range(3):
            log_pz = sims[k] - math.log(sum(math.exp(s) for s in sims))
            class_sims = [unit(MU_Y[c]) @ unit(MU_Z[k]) for c in range(2)]  # no temperature
            log_py = class_sims[y[i]] - math.log(sum(math.exp(s) for s in class_sims))
            assert got[i, k].item() == pytest.approx(log_pz + log_py, abs=1e-5)


def hand_loss_terms(e, y, z, mu_y, mu_z, tau, ang_norm=False):
    l1 = l2 = l3 = 0.0
    n = len(y)
    for i in range(n):
        e_hat = unit(e[i])
        if ang_norm:
            centre = unit(mu_y[y[i]])
            sims = [unit(e_hat - centre) @ unit(unit(mu_z[k]) - centre) / tau for k in range(len(mu_z))]
        else:
            sims = [e_hat @ unit(mu_z[k]) / tau for k in range(len(mu_z))]
        l1 -= (sims[z[i]] - math.log(sum(math.exp(s) for s in sims))) / n
        class_sims = [unit(mu_y[c]) @ unit(mu_z[z[i]]) for c in range(len(mu_y))]
        l2 -= (class_sims[y[i]] - math.log(sum(math.exp(s) for s in class_sims))) / n
        logits = [np.maximum(e_hat, 0) @ np.asarray(mu_y[c]) for c in range(len(mu_y))]  # raw mu_y
        l3 -= (logits[y[i]] - math.log(sum(math.exp(s) for s in logits))) / n
    return {"subclass": l1, "superclass": l2, "cls": l3}


@pytest.mark.parametrize("ang_norm", [False, True])
def test_scgm_g_loss_terms_by_hand(ang_norm):
    method = ScgmG(get_backbone("small_cnn", width=1), num_classes=2, num_samples=2, n_subclasses=3, embedding_dim=2,
                   ang_norm=ang_norm)
    with torch.no_grad():
        method.mu_y.copy_(torch.tensor(MU_Y))
        method.mu_z.copy_(torch.tensor(MU_Z))
    y, z = [1, 0], [2, 1]
    got = method.loss_terms(torch.tensor(E), torch.tensor(y), torch.tensor(z))
    expected = hand_loss_terms(E, y, z, MU_Y, MU_Z, 0.1, ang_norm)
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value, abs=1e-5), name
    # L3 reads the un-normalised mu_y, L1 and L2 only its direction
    with torch.no_grad():
        method.mu_y.mul_(3.0)
    scaled = method.loss_terms(torch.tensor(E), torch.tensor(y), torch.tensor(z))
    assert scaled["subclass"].item() == pytest.approx(got["subclass"].item(), abs=1e-6)
    assert scaled["superclass"].item() == pytest.approx(got["superclass"].item(), abs=1e-6)
    assert abs(scaled["cls"].item() - got["cls"].item()) > 1e-3


def test_scgm_g_total_loss_and_logs():
    method, batch = make("scgm_g", alpha=0.25).train(), fixed_batch()
    method.subclass_labels.copy_(torch.tensor([0, 1, 2, 3, 4, 5, 0, 1]))
    loss, logs = method.training_step(batch)
    assert set(logs) == {"subclass_loss", "superclass_loss", "cls_loss", "train_accuracy"}
    expected_loss = 0.25 * (logs["subclass_loss"] + logs["superclass_loss"]) + logs["cls_loss"]
    assert loss.item() == pytest.approx(expected_loss, abs=1e-5)
    e = method(batch["images"])
    expected = method.loss_terms(e, batch["labels"], method.subclass_labels[batch["index"]])
    assert logs["subclass_loss"] == pytest.approx(expected["subclass"].item(), abs=1e-5)  # z read by index


def test_paper_defaults_and_cards():
    for cls, names in ((ScgmG, ("n_subclasses", "tau", "alpha", "lam", "n_iter_estep", "embedding_dim", "mlp")),
                       (ScgmA, ("n_subclasses", "tau1", "tau2", "alpha", "lam", "n_iter_estep", "embedding_dim", "mlp",
                                "queue_size", "momentum", "temperature", "head_norm", "release_compat"))):
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        paper = {"n_subclasses": 100, "tau": 0.1, "tau1": 0.1, "tau2": 1.0, "alpha": 0.5, "lam": 25.0,
                 "n_iter_estep": 5, "embedding_dim": 128, "mlp": True, "queue_size": 65536, "momentum": 0.999,
                 "temperature": 0.2, "head_norm": True, "release_compat": False}
        assert {k: defaults[k] for k in names} == {k: paper[k] for k in names}
        assert cls.labels == "coarse" and cls.default_layer == "head" and cls.meta["deviations"]
    assert ScgmG.views == 1 and ScgmA.views == 2
    assert ScgmG.layers == ("backbone", "head") and ScgmA.layers == ("backbone", "head", "logits")
    assert isinstance(make("scgm_g").fc_enc, torch.nn.Sequential)
    assert isinstance(make("scgm_g", mlp=False).fc_enc, torch.nn.Linear)


# --- the E-step -------------------------------------------------------------------------------
def test_e_step_writes_labels_by_index_and_follows_the_schedule():
    """12 embeddings near 3 subclass means (4 each); batches come shuffled; each sample's label
    must land at its own index. E-steps run on 0-based epochs 0, 5, 10 for n_iter_estep 5."""
    method = ScgmG(get_backbone("small_cnn", width=1), num_classes=2, num_samples=12, n_subclasses=3, embedding_dim=2)
    with torch.no_grad():
        method.mu_z.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        method.mu_y.copy_(torch.tensor([[1.0, 1.0], [-1.0, 1.0]]))
    target = torch.tensor([2, 0, 1, 1, 0, 2, 2, 1, 0, 0, 1, 2])
    g = torch.Generator().manual_seed(0)
    e = method.mu_z.detach()[target] + 0.1 * torch.randn(12, 2, generator=g)
    coarse = (target == 2).long()
    method.estep_embedding = lambda images: images  # the batch "images" are the embeddings
    order = torch.randperm(12, generator=g)
    calls = []

    def batches():
        calls.append(1)
        return ({"images": e[idx], "labels": coarse[idx], "index": idx} for idx in order.split(5))

    epochs_run = []
    for epoch in range(12):
        before = len(calls)
        method.on_epoch_start(epoch, batches)
        if len(calls) > before:
            epochs_run.append(epoch)
        if epoch == 0:
            assert method.subclass_labels.tolist() == target.tolist()
            method.subclass_labels.zero_()
    assert epochs_run == [0, 5, 10]
    assert method.subclass_labels.tolist() == target.tolist()
    assert method.subclass_labels.dtype == torch.long and "subclass_labels" in method.state_dict()


def test_e_step_runs_through_the_model_in_train_mode():
    method, batch = make("scgm_g").train(), fixed_batch()
    running = method.backbone.features[1].running_mean.clone()
    method.on_epoch_start(0, lambda: iter([batch]))
    assert not torch.equal(running, method.backbone.features[1].running_mean)  # train-mode BN, as released
    with torch.no_grad():
        log_p = subclass_log_joint(method(batch["images"]), batch["labels"], method.mu_y, method.mu_z, 0.1)
    # the model was just run once more in train mode with the same batch: same BN batch statistics
    expected = torch.empty(8, dtype=torch.long)
    expected[batch["index"]] = sinkhorn_knopp(log_p)
    assert method.subclass_labels.tolist() == expected.tolist()


# --- SCGM-A -----------------------------------------------------------------------------------
def scgm_a_terms(method, batch):
    e, logits = method.query(batch["images"])
    k = method.keys(batch["view2"])
    return e, logits, method.loss_terms(batch, e, logits, k)


def test_scgm_a_heads():
    method, batch = make("scgm_a").train(), fixed_batch()
    assert not hasattr(method, "classifier")  # seq_em: mu_y is the classifier
    e, logits = method.query(batch["images"])
    torch.testing.assert_close(logits, F.relu(F.normalize(e, dim=1)) @ method.mu_y.T)
    assert method.class_weights() is method.mu_y
    off = make("scgm_a", head_norm=False).train()
    e, logits = off.query(batch["images"])
    torch.testing.assert_close(logits, F.relu(e) @ off.mu_y.T)


def test_scgm_a_subclass_terms_by_hand():
    method, batch = make("scgm_a", tau1=0.2, tau2=0.5).train(), fixed_batch()
    method.subclass_labels.copy_(torch.tensor([0, 1, 2, 3, 4, 5, 0, 1]))
    e, logits, terms = scgm_a_terms(method, batch)
    z, y = method.subclass_labels[batch["index"]], batch["labels"]
    mu_y, mu_z = F.normalize(method.mu_y, dim=1), F.normalize(method.mu_z, dim=1)
    ls3 = -torch.log_softmax(F.normalize(e, dim=1) @ mu_z.T / 0.2, 1)[torch.arange(8), z].mean()
    ls4 = -torch.log_softmax(mu_z[z] @ mu_y.T / 0.5, 1)[torch.arange(8), y].mean()
    torch.testing.assert_close(terms["subclass"], ls3)
    torch.testing.assert_close(terms["two_class"], ls4)
    torch.testing.assert_close(terms["cls"], F.cross_entropy(logits, y))
    loss, logs = method.training_step(batch)
    assert set(logs) == {"cls_loss", "contrast_loss", "subclass_loss", "two_class_loss", "train_accuracy"}
    expected_loss = logs["cls_loss"] + logs["contrast_loss"] + 0.5 * (logs["subclass_loss"] + logs["two_class_loss"])
    assert loss.item() == pytest.approx(expected_loss, abs=1e-5)


def test_scgm_a_means_learn_unless_release_compat():
    batch = fixed_batch()
    method = make("scgm_a").train()
    _, _, terms = scgm_a_terms(method, batch)
    sum(terms.values()).backward()
    assert method.mu_z.grad is not None and method.mu_z.grad.abs().sum() > 0
    assert terms["two_class"].requires_grad

    released = make("scgm_a", release_compat=True).train()
    assert not released.mu_z.requires_grad  # declared frozen: never trains, no weight decay
    _, _, terms = scgm_a_terms(released, batch)
    assert not terms["two_class"].requires_grad  # ls4 is a constant
    terms["subclass"].backward(retain_graph=True)
    assert released.mu_z.grad is None and released.mu_y.grad is None  # ls3 reaches only the encoder
    released.zero_grad()
    (terms["cls"] + terms["contrast"] + 0.5 * terms["subclass"]).backward()
    grad_all = released.mu_y.grad.clone()
    released.zero_grad()
    _, _, terms = scgm_a_terms(released, batch)
    terms["cls"].backward()
    torch.testing.assert_close(grad_all, released.mu_y.grad)  # mu_y trains only through ls1
    assert released.mu_z.grad is None


def test_scgm_a_e_step_uses_the_query_embedding_of_view_1():
    method, batch = make("scgm_a").eval(), fixed_batch()
    poisoned = {**batch, "view2": torch.full_like(batch["view2"], float("nan"))}  # NaN if it were read
    method.on_epoch_start(0, lambda: iter([poisoned]))
    with torch.no_grad():
        log_p = subclass_log_joint(method.query(batch["images"])[0], batch["labels"], method.mu_y, method.mu_z, 0.1)
    expected = torch.empty(8, dtype=torch.long)
    expected[batch["index"]] = sinkhorn_knopp(log_p)
    assert method.subclass_labels.tolist() == expected.tolist()


# --- training and state -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["scgm_g", "scgm_a"])
def test_loss_decreases_on_a_fixed_batch(name):
    """Pseudo-labels from one E-step, then fixed; SCGM-A's queues (2 keys per class) are filled
    with the batch's keys first, so the negatives stay (nearly) the same across steps."""
    method, batch = make(name, queue_size=2) if name == "scgm_a" else make(name), fixed_batch()
    method.train().on_epoch_start(0, lambda: iter([batch]))
    if name == "scgm_a":
        with torch.no_grad():
            method.training_step(batch)
    labels = method.subclass_labels.clone()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        loss, _ = method.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert torch.equal(method.subclass_labels, labels)
    assert losses[-1] < losses[0] - 0.05


@pytest.mark.parametrize("name, params", [("scgm_g", {}), ("scgm_a", {}), ("scgm_a", {"release_compat": True})])
def test_state_dict_roundtrip(name, params):
    method, batch = make(name, **params).train(), fixed_batch()
    method.on_epoch_start(0, lambda: iter([batch]))
    method.training_step(batch)  # fills a queue, moves the key encoder
    clone = make(name, seed=1, **params)
    clone.load_state_dict(method.state_dict(), strict=True)
    assert torch.equal(clone.subclass_labels, method.subclass_labels)
    method.eval(), clone.eval()
    for layer in method.layers:
        assert torch.equal(clone.embed(batch["images"], layer), method.embed(batch["images"], layer))
    assert method.embed(batch["images"], None).shape == (8, 128)
