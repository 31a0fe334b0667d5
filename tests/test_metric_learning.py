"""RevDML's supervised embedding losses (methods/metric_learning.py): each loss on a tiny fixed
batch against a hand computation of RevDML's formula, the pml configuration where it matters,
the miners, and the losses' own parameter groups."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import class_batch
from fgbench.methods import build_method, get_method_class, list_methods
from fgbench.methods.metric_learning import EmbeddingMethod
from fgbench.models import get_backbone

LOSSES = ("triplet", "margin", "multisimilarity", "contrastive", "proxynca", "normsoftmax")


def make(name, **params):
    torch.manual_seed(0)
    return build_method(name, get_backbone("small_cnn", width=1), num_classes=4, num_samples=16, params=params)


def circle(*degrees):
    """Unit vectors in 2-d at the given angles."""
    theta = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(theta), torch.sin(theta)], 1)


def batch(n=16):
    return class_batch(n)


def test_registered_with_cards():
    assert set(LOSSES) <= set(list_methods()) and "arcface" not in LOSSES
    for name in LOSSES:
        cls = get_method_class(name)
        assert issubclass(cls, EmbeddingMethod) and cls.labels == "supervised"
        assert "RevDML" in cls.meta["paper"] and cls.meta["deviations"]


# --- triplet --------------------------------------------------------------------------------------

def test_triplet_loss_against_hand_computation():
    """RevDML: mean over mined triplets of relu(|a-p|^2 - |a-n|^2 + margin), zeros included."""
    method = make("triplet", margin=0.2)
    emb = circle(0, 20, 40, 60, 80).float()
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


# --- margin ---------------------------------------------------------------------------------------

def revdml_margin(emb, labels, triplets, beta, margin=0.2):
    """criteria/margin.py: d = sqrt(|.|^2 + 1e-8), beta of the anchor's class,
    sum(pos + neg) / #(triplets with a non-zero term) (bool + bool is a logical or)."""
    pos, neg = [], []
    for a, p, n in zip(*triplets):
        b = beta[labels[a]]
        d_ap = math.sqrt(float(((emb[a] - emb[p]) ** 2).sum()) + 1e-8)
        d_an = math.sqrt(float(((emb[a] - emb[n]) ** 2).sum()) + 1e-8)
        pos.append(max(0.0, d_ap - b + margin))
        neg.append(max(0.0, b - d_an + margin))
    count = sum((p > 0) or (n > 0) for p, n in zip(pos, neg))
    return sum(pos) + sum(neg), count, sum(p > 0 for p in pos) + sum(n > 0 for n in neg)


def test_margin_against_hand_computation():
    method = make("margin")
    beta = [1.2, 0.6, 1.0, 1.2]  # class-wise: each triplet must use its anchor's class
    with torch.no_grad():
        method.loss.beta.copy_(torch.tensor(beta))
    emb = circle(0, 20, 40, 60, 120, 200).float()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    triplets = (torch.tensor([0, 2, 4, 5]), torch.tensor([1, 3, 5, 4]), torch.tensor([2, 4, 3, 0]))
    total, triplet_count, term_count = revdml_margin(emb.double(), labels, triplets, beta)
    assert 0 < triplet_count < term_count  # a zero triplet and a triplet with both terms active
    got = method.loss(emb, labels, triplets)
    assert got.item() == pytest.approx(total / triplet_count, rel=1e-5)  # pml's own divisor: term_count


def test_margin_beta_learns_in_its_own_group():
    method = make("margin").train()
    assert method.loss.beta.shape == (4,) and torch.all(method.loss.beta == 1.2)
    loss, _ = method.training_step(batch())
    loss.backward()
    assert method.loss.beta.grad is not None and method.loss.beta.grad.abs().sum() > 0
    groups = method.param_groups()
    assert len(groups) == 2
    assert len(groups[1]["params"]) == 1 and groups[1]["params"][0] is method.loss.beta
    assert groups[1]["lr_scale"] == 50.0 and groups[1]["weight_decay"] == 0.0  # 5e-4 / RevDML's 1e-5
    assert "lr_scale" not in groups[0]
    assert all(p is not method.loss.beta for p in groups[0]["params"])
    assert len(groups[0]["params"]) + 1 == len(list(method.parameters()))
    assert make("margin", beta=0.6, beta_lr_scale=10.0).param_groups()[1]["lr_scale"] == 10.0


# --- multi-similarity -----------------------------------------------------------------------------

def revdml_multisimilarity(emb, labels, alpha=2.0, beta=40.0, margin=0.1, thresh=0.5):
    """criteria/multisimilarity.py, as a loop over anchors; returns (loss, skipped anchors)."""
    sim = emb @ emb.T
    losses, skipped = [], 0
    for i in range(len(emb)):
        pos = [sim[i, j] for j in range(len(emb)) if labels[j] == labels[i] and j != i]
        neg = [sim[i, j] for j in range(len(emb)) if labels[j] != labels[i]]
        neg_kept = [s for s in neg if s + margin > min(pos)]
        pos_kept = [s for s in pos if s - margin < max(neg)]
        if not neg_kept or not pos_kept:
            skipped += 1
            continue
        pos_term = math.log(1 + sum(math.exp(-alpha * (s - thresh)) for s in pos_kept)) / alpha
        neg_term = math.log(1 + sum(math.exp(beta * (s - thresh)) for s in neg_kept)) / beta
        losses.append(pos_term + neg_term)
    return sum(losses) / len(losses), skipped


def test_multisimilarity_against_hand_computation():
    method = make("multisimilarity")
    assert (method.loss.alpha, method.loss.beta, method.loss.base, method.miner.epsilon) == (2.0, 40.0, 0.5, 0.1)
    emb = circle(0, 10, 40, 100, 60, 200).float()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    expected, skipped = revdml_multisimilarity(emb.double().numpy(), labels.numpy())
    assert skipped > 0  # the mean is over the anchors that kept pairs (pml's default: all anchors)
    assert method.loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-5)


# --- contrastive ----------------------------------------------------------------------------------

def test_contrastive_against_hand_computation():
    """RevDML: mean_pos relu(d(a,p) - 0) + mean_neg relu(1 - d(a,n)), plain L2, zeros counted."""
    method = make("contrastive")
    emb = circle(0, 20, 40, 60, 120, 200).float()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    triplets = (torch.tensor([0, 2, 4, 5]), torch.tensor([1, 3, 5, 4]), torch.tensor([2, 4, 3, 0]))
    e = emb.double()
    pos = [float((e[a] - e[p]).norm()) for a, p in zip(triplets[0], triplets[1])]
    neg = [max(0.0, 1 - float((e[a] - e[n]).norm())) for a, n in zip(triplets[0], triplets[2])]
    assert 0 in neg and any(neg)  # zero negative terms count in the mean
    expected = np.mean(pos) + np.mean(neg)
    assert method.loss(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-5)
    assert (method.loss.pos_margin, method.loss.neg_margin, method.loss.distance.power) == (0.0, 1.0, 1)


# --- proxy losses ---------------------------------------------------------------------------------

def test_proxynca_against_hand_computation():
    """RevDML: x = 3 x/|x|, p = 3 p/|p|; mean_i |x_i - p_y|^2 + logsumexp_{c != y} -|x_i - p_c|^2."""
    method = make("proxynca", embedding_dim=2)
    proxies = torch.tensor([[1.0, 0.2], [-0.3, 2.0], [0.5, -1.0], [-1.0, -1.0]])
    with torch.no_grad():
        method.loss.proxies.copy_(proxies)
    emb = circle(0, 20, 40, 100, 200, 300).float()
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    x = 3 * emb.double().numpy()
    p = 3 * (proxies / proxies.norm(dim=1, keepdim=True)).double().numpy()
    losses = []
    for i, y in enumerate(labels.tolist()):
        d = ((x[i] - p) ** 2).sum(1)
        neg = np.delete(d, y)
        losses.append(d[y] + np.log(np.exp(-neg).sum()))
    assert method.loss_fn(emb, labels).item() == pytest.approx(np.mean(losses), rel=1e-5)
    assert method.loss.softmax_scale == 9.0


def test_proxy_initialisation_and_groups():
    proxynca, normsoftmax = make("proxynca"), make("normsoftmax")
    assert proxynca.loss.proxies.shape == (4, 128)
    assert 0.11 < proxynca.loss.proxies.std().item() < 0.14  # RevDML's randn / 8
    bound = 128**-0.5
    w = normsoftmax.loss.W
    assert w.shape == (128, 4) and w.abs().max() <= bound and w.abs().max() > 0.9 * bound  # U(-1/sqrt(d), 1/sqrt(d))
    for method, proxies, scale in ((proxynca, proxynca.loss.proxies, 50.0), (normsoftmax, w, 1.0)):
        groups = method.param_groups()
        assert groups[1] == {"params": [proxies], "lr_scale": scale, "weight_decay": 0.0}
        assert all(p is not proxies for p in groups[0]["params"])


def test_normsoftmax_against_hand_computation():
    """RevDML: cross-entropy of x . (w_c / |w_c|) / 0.05."""
    method = make("normsoftmax", embedding_dim=2)
    w = torch.tensor([[1.0, 0.2], [-0.3, 2.0], [0.5, -1.0], [-1.0, -1.0]])
    with torch.no_grad():
        method.loss.W.copy_(w.T)
    emb = circle(0, 20, 40, 100, 200, 300).float()
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    logits = emb.double().numpy() @ (w / w.norm(dim=1, keepdim=True)).double().numpy().T / 0.05
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    expected = -logp[np.arange(6), labels.numpy()].mean()
    assert method.loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-5)
    assert method.loss.temperature == 0.05


def test_loss_parameters_stay_float32_under_autocast():
    """pml casts a loss's parameters to the embeddings' dtype; training_step hands it float32."""
    for name in ("proxynca", "normsoftmax", "margin"):
        method = make(name).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = method.training_step(batch())
        assert torch.isfinite(loss)
        assert all(p.dtype == torch.float32 for p in method.loss.parameters())
