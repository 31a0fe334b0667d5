"""The vMF loss and its softmax baselines: sampler, Bessel approximations, losses against
hand computations, the z-kappa initialisation, parameter groups, probabilities."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.special import ive

from fgbench.errors import ConfigError
from fgbench.methods import build_method
from fgbench.methods.vmf import (arcface_logits, bessel_ratio_approx, log_vmf_normalizer_approx, sample_vmf,
                                 vmf_loss_from_samples)
from fgbench.models import get_backbone
from fgbench.train.loop import _optimizer, _set_learning_rate

FAMILY = ("vmf", "softmax", "cosine_softmax", "arcface")


def make(name, num_classes=4, **params):
    torch.manual_seed(0)
    return build_method(name, get_backbone("small_cnn", width=1), num_classes=num_classes, num_samples=32,
                        epochs=params.pop("epochs", 1), params=params)


def exact_ratio(kappa, d):
    """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) (scaled Bessel functions cancel exp(kappa))."""
    return ive(d / 2, kappa) / ive(d / 2 - 1, kappa)


def exact_log_normalizer(kappa, d):
    """log C_d(kappa) = (d/2-1) log k - (d/2) log(2 pi) - log I_{d/2-1}(k)."""
    return (d / 2 - 1) * np.log(kappa) - (d / 2) * np.log(2 * np.pi) - (np.log(ive(d / 2 - 1, kappa)) + kappa)


def unit(d, seed):
    return F.normalize(torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=0)


# --- sampler -------------------------------------------------------------------------------


@pytest.mark.parametrize("d, kappa", [(3, 0.5), (3, 5.0), (3, 100.0), (128, 10.0), (128, 100.0), (128, 2000.0)])
def test_sampler_mean_resultant_length(d, kappa):
    torch.manual_seed(1)
    mu, n = unit(d, d), 20_000
    x = sample_vmf(mu[None], torch.tensor([[kappa]], dtype=torch.float64), n)[:, 0]
    assert x.shape == (n, d)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-9)
    w = (x @ mu).numpy()
    assert abs(w.mean() - exact_ratio(kappa, d)) < 4.5 * w.std() / math.sqrt(n)
    # the mean vector is A_d(kappa) mu, coordinate by coordinate
    err = (x.mean(0) - exact_ratio(kappa, d) * mu).abs().numpy()
    assert (err < 4.5 * x.std(0).numpy() / math.sqrt(n) + 1e-12).all()


def w_cdf(kappa, d):
    """CDF of w = <mu, x> for x ~ vMF on S^{d-1}: density ~ exp(k w) (1 - w^2)^((d-3)/2)."""
    grid = np.linspace(-1, 1, 400_001)
    log_p = kappa * grid + (d - 3) / 2 * np.log(np.clip(1 - grid**2, 1e-300, None))
    p = np.exp(log_p - log_p.max())
    cdf = np.concatenate([[0], np.cumsum((p[1:] + p[:-1]) / 2)])
    return lambda w: np.interp(w, grid, cdf / cdf[-1])


@pytest.mark.parametrize("d, kappa", [(3, 2.0), (4, 1.0), (10, 5.0), (128, 50.0), (128, 500.0)])
def test_sampler_distribution(d, kappa):
    """Kolmogorov-Smirnov of <mu, x> against its exact marginal (Wood's sampler for d != 3)."""
    torch.manual_seed(2)
    mu = unit(d, 0)
    w = (sample_vmf(mu[None], torch.tensor([kappa], dtype=torch.float64), 5000)[:, 0] @ mu).numpy()
    assert stats.kstest(w, w_cdf(kappa, d)).pvalue > 1e-3


def test_sampler_batches_and_float32():
    torch.manual_seed(3)
    mu = F.normalize(torch.randn(5, 7), dim=1)
    kappa = torch.tensor([[0.0], [1.0], [10.0], [1e3], [1e6]])
    for m in (mu, F.normalize(torch.randn(5, 3), dim=1)):
        x = sample_vmf(m, kappa, 11)
        assert x.shape == (11, 5, m.shape[1]) and x.dtype == torch.float32 and torch.isfinite(x).all()
        torch.testing.assert_close(x.norm(dim=2), torch.ones(11, 5))
        assert ((x[:, -1] @ m[-1]) > 0.999).all()  # kappa = 1e6: at mu


@pytest.mark.parametrize("d, kappa", [(3, 3.0), (10, 5.0), (128, 200.0)])
def test_sampler_gradients(d, kappa):
    """rsample: gradients reach mu and kappa. The mu gradient of E<x, a> is unbiased for any d;
    for d = 3 (inverse CDF) so is the kappa gradient of E<mu, x>, = A_3'(k) = 1/k^2 - 1/sinh(k)^2
    (Wood's sampler, d != 3, drops s-vae's correction term: its kappa gradient is biased)."""
    torch.manual_seed(4)
    n = 40_000
    p = (2 * unit(d, 5)).requires_grad_()  # mu = p / |p|
    k = torch.tensor([kappa], dtype=torch.float64, requires_grad=True)
    a = unit(d, 6)
    x = sample_vmf(F.normalize(p, dim=0)[None], k, n)[:, 0]
    (x @ a).mean().backward()
    assert torch.isfinite(k.grad).all() and k.grad.abs() > 0
    mu = p.detach() / p.detach().norm()
    expected = exact_ratio(kappa, d) * (a - (a @ mu) * mu) / p.detach().norm()  # d/dp of A_d <mu, a>
    assert (p.grad - expected).norm() < 0.02 * expected.norm()
    k.grad = None
    w = sample_vmf(mu[None], k, n)[:, 0] @ mu
    w.mean().backward()
    assert k.grad.item() > 0  # E<mu, x> = A_d(kappa) increases with kappa
    if d == 3:
        assert k.grad.item() == pytest.approx(1 / kappa**2 - 1 / math.sinh(kappa) ** 2, rel=0.05)


def test_sampler_kappa_gradient_at_one():
    """d = 3 switches formulas at kappa = 1; the branch is selected with torch.where, so kappa = 1
    itself gets the gradient A_3'(1) = 1 - 1/sinh(1)^2 = 0.276 (a clamp would give 0)."""
    torch.manual_seed(5)
    k = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    mu = unit(3, 7)
    (sample_vmf(mu[None], k, 200_000)[:, 0] @ mu).mean().backward()
    assert k.grad.item() == pytest.approx(1 - 1 / math.sinh(1.0) ** 2, rel=0.03)


def test_release_compat_sampler_reproduces_the_release_bias():
    """google-research/vmf_embeddings, third_party/s_vae_pytorch/distributions.py
    (``__sample_w_rej``): b = (d-1)/(4 kappa) for every kappa >= 11 (a blend over 10-11). For
    d = 128, kappa = 50 its draws have mean <mu, x> about 0.22; the exact sampler gives
    A_128(50) = 0.345. Below kappa = 10 both are the same sampler."""
    from fgbench.methods.vmf import wood_b

    mu, n = unit(128, 8), 20_000
    kappa = torch.tensor([50.0], dtype=torch.float64)
    means = {}
    for compat in (False, True):
        torch.manual_seed(6)
        means[compat] = (sample_vmf(mu[None], kappa, n, release_compat=compat)[:, 0] @ mu).mean().item()
    assert means[False] == pytest.approx(exact_ratio(50.0, 128), abs=0.003) and means[False] == pytest.approx(0.345, abs=0.003)
    assert means[True] == pytest.approx(0.221, abs=0.003)
    k = torch.tensor([5.0, 10.0, 10.5, 11.0, 50.0], dtype=torch.float64)
    exact, taylor = wood_b(k, 128), 127 / (4 * k)
    torch.testing.assert_close(wood_b(k, 128, release_compat=True),
                               torch.stack([exact[0], exact[1], (exact[2] + taylor[2]) / 2, taylor[3], taylor[4]]))
    torch.testing.assert_close(exact, (-2 * k + torch.sqrt(4 * k**2 + 127**2)) / 127)  # s-vae's b_true
    zero = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)  # a zero class weight
    wood_b(zero, 128, release_compat=True).backward()
    assert torch.isfinite(zero.grad).all()


def test_vmf_release_compat_param():
    assert make("vmf", embedding_dim=16, release_compat=True).release_compat is True
    with pytest.raises(ConfigError, match="release_compat"):
        make("vmf", embedding_dim=16, release_compat="yes")


# --- Bessel approximations -----------------------------------------------------------------


KAPPAS = np.array([1e-3, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0, 1e3, 1e4])


@pytest.mark.parametrize("d", [2, 3, 4, 16, 128])
def test_bessel_ratio_approx(d):
    approx = bessel_ratio_approx(torch.tensor(KAPPAS, dtype=torch.float64), d).numpy()
    rel = np.abs(approx - exact_ratio(KAPPAS, d)) / exact_ratio(KAPPAS, d)
    # worst at kappa -> 0, where it tends to 1 / (2 (d - 1)): 25% for d = 3, 0.4% for d = 128
    assert (rel <= 1 / (2 * (d - 1)) + 1e-9).all()
    assert rel[0] == pytest.approx(1 / (2 * (d - 1)), rel=0.01)
    # accurate once kappa is large against d
    assert (rel[KAPPAS >= 4 * d] < 2e-3).all()
    assert (rel[KAPPAS >= 1e3] < 1e-4).all()


@pytest.mark.parametrize("d", [3, 16, 128])
def test_log_normalizer_approx(d):
    """Up to a constant in d: its derivative is -A_d (approximate), and its offset to the exact
    log C_d drifts by about 0.1 nat at most over kappa in [1e-3, 1e4]."""
    k = torch.tensor(KAPPAS, dtype=torch.float64)
    approx = log_vmf_normalizer_approx(k**2, d).numpy()
    offset = approx - exact_log_normalizer(KAPPAS, d)
    assert offset.max() - offset.min() < 0.11
    assert abs(offset[-1] - offset[-2]) < 1e-3  # converged at large kappa
    h = 1e-5
    slope = (log_vmf_normalizer_approx((k + h) ** 2, d) - log_vmf_normalizer_approx((k - h) ** 2, d)) / (2 * h)
    torch.testing.assert_close(slope, -bessel_ratio_approx(k, d), rtol=1e-5, atol=1e-8)


# --- the vMF loss --------------------------------------------------------------------------


def approx_log_c(kappa, d):
    """The paper's Eq. 12 in plain float64 (an independent transcription)."""
    vm, vp = d / 2 - 0.5, d / 2 + 0.5
    sm, sp = math.sqrt(vm**2 + kappa**2), math.sqrt(vp**2 + kappa**2)
    return 0.5 * (vm * math.log(vm + sm) - sm + vm * math.log(vm + sp) - sp)


def approx_ratio(kappa, d):
    vm, vp = d / 2 - 0.5, d / 2 + 0.5
    return 0.5 * (kappa / (vm + math.sqrt(vp**2 + kappa**2)) + kappa / (vm + math.sqrt(vm**2 + kappa**2)))


def direct_vmf_loss(z, z_samples, weights, labels, beta):
    """The formula with explicit loops, log-space sums (max-shifted) and norms of w_c + beta z~."""
    z, zs, w = z.tolist(), z_samples.tolist(), weights.tolist()
    d, total = len(z[0]), 0.0
    for i, y in enumerate(labels.tolist()):
        first = 0.0
        for s in range(len(zs)):
            terms = []
            for wc in w:
                norm_c = math.sqrt(sum(v * v for v in wc))
                norm_sum = math.sqrt(sum((a + beta * b) ** 2 for a, b in zip(wc, zs[s][i])))
                terms.append(approx_log_c(norm_c, d) - approx_log_c(norm_sum, d))
            top = max(terms)
            first += (top + math.log(sum(math.exp(t - top) for t in terms))) / len(zs)
        kz, ky = math.sqrt(sum(v * v for v in z[i])), math.sqrt(sum(v * v for v in w[y]))
        second = beta * approx_ratio(kz, d) * approx_ratio(ky, d) * sum(a * b for a, b in zip(z[i], w[y])) / (kz * ky)
        total += first - second
    return total / len(labels)


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_vmf_loss_matches_direct_formula(scale):
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 3, generator=g, dtype=torch.float64)
    z = scale * z / z.norm(dim=1, keepdim=True) * torch.tensor([[1.0], [2.0]], dtype=torch.float64)  # |z| = 1e4, 2e4
    weights = 3 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    labels, beta = torch.tensor([2, 0]), 1.7
    torch.manual_seed(8)
    kappa = z.norm(dim=1, keepdim=True)
    z_samples = sample_vmf(z / kappa, kappa, 4)
    loss = vmf_loss_from_samples(z, z_samples, weights, labels, torch.tensor(beta, dtype=torch.float64))
    assert loss.item() == pytest.approx(direct_vmf_loss(z, z_samples, weights, labels, beta), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("d", [3, 128])
def test_vmf_loss_finite_for_large_kappa(d):
    method = make("vmf", embedding_dim=d, init_temp=-3.0)  # beta = e^3 ~ 20
    g = torch.Generator().manual_seed(9)
    z = torch.randn(6, d, generator=g)
    z = (1e4 * z / z.norm(dim=1, keepdim=True)).requires_grad_()
    with torch.no_grad():
        method.classifier.weight.mul_(1e3)
    loss = method.loss(z, torch.tensor([0, 1, 2, 3, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and torch.isfinite(method.classifier.weight.grad).all()
    assert torch.isfinite(method.temp.grad)


def test_vmf_class_weight_init():
    c, d = 0.4, 3
    method = make("vmf", num_classes=3000, embedding_dim=d, kappa_confidence=c)
    sigma = c / (1 - c**2) * (d - 1) / math.sqrt(d)
    assert method.classifier.weight.std().item() == pytest.approx(sigma, rel=0.03)
    assert method.classifier.weight.mean().item() == pytest.approx(0, abs=0.03)


def image_batches(seed, n_batches=3, size=16):
    g = torch.Generator().manual_seed(seed)
    return [{"images": torch.rand(size, 1, 28, 28, generator=g), "labels": torch.randint(0, 4, (size,), generator=g),
             "index": torch.arange(size)} for _ in range(n_batches)]


def test_z_kappa_mult_initialisation():
    c, d = 0.4, 3
    method = make("vmf", embedding_dim=d, kappa_confidence=c).train()
    assert torch.isnan(method.z_kappa_mult)
    batches = image_batches(0)
    reference = copy.deepcopy(method)  # train-mode outputs depend on the batch only (BN batch statistics)
    with torch.no_grad():
        mean_abs = torch.cat([reference.head(reference.backbone(b["images"])) for b in batches]).abs().mean().item()
    method.on_epoch_start(0, lambda: iter(batches))
    expected = (1 / mean_abs) * c / (1 - c**2) * (d - 1) / math.sqrt(d)
    assert method.z_kappa_mult.item() == pytest.approx(expected, rel=1e-5)
    images = batches[0]["images"]
    method.eval()
    torch.testing.assert_close(method.embed(images, "head"), method.z_kappa_mult * method.head(method.backbone(images)))
    # never recomputed: not at epoch 1, not after a state-dict round trip (checkpoint, model.pt)
    method.train().on_epoch_start(1, lambda: iter(image_batches(1)))
    assert method.z_kappa_mult.item() == pytest.approx(expected, rel=1e-5)
    fresh = make("vmf", embedding_dim=d, kappa_confidence=c)
    fresh.load_inference_state(method.inference_state())
    fresh.train().on_epoch_start(0, lambda: iter(image_batches(2)))
    assert fresh.z_kappa_mult.item() == method.z_kappa_mult.item()
    assert "z_kappa_mult" in method.state_dict()


def test_head_and_classifier_init_follow_the_release():
    """google-research/vmf_embeddings: archs/n_digit_mnist_arch.py applies Xavier-uniform to every
    Linear (remap and classifier) of the MNIST network; third_party/dml_cross_entropy/resnet.py
    leaves the remap and the (non-vMF) classifier at torch's default init (uniform, bound
    1/sqrt(fan_in)), remap bias zero. The bounds below tell the two apart."""
    small = make("softmax", num_classes=10, embedding_dim=3)
    assert small.head.weight.abs().max() > 1 / math.sqrt(120) + 0.02  # Xavier bound sqrt(6/123) = 0.22
    assert small.head.weight.abs().max() <= math.sqrt(6 / 123)
    assert small.classifier.weight.abs().max() <= math.sqrt(6 / 13)
    torch.manual_seed(0)
    resnet = build_method("softmax", get_backbone("resnet18"), num_classes=10, num_samples=32, epochs=1,
                          params={"embedding_dim": 128})
    assert resnet.head.weight.abs().max() <= 1 / math.sqrt(512)  # Xavier would reach sqrt(6/640) = 0.097
    assert resnet.head.weight.abs().max() > 0.9 / math.sqrt(512)
    assert resnet.classifier.weight.abs().max() <= 1 / math.sqrt(128)
    assert torch.count_nonzero(resnet.head.bias) == 0 and torch.count_nonzero(small.head.bias) == 0


# --- the deterministic baselines -----------------------------------------------------------


def cross_entropy_by_hand(logits, labels):
    total = 0.0
    for row, y in zip(logits, labels):
        total += -row[y] + math.log(sum(math.exp(v) for v in row))
    return total / len(labels)


def toy_embeddings(method, d=3):
    g = torch.Generator().manual_seed(11)
    z = torch.randn(5, d, generator=g)
    with torch.no_grad():
        method.classifier.weight.copy_(torch.randn(4, d, generator=g))
    return z, torch.tensor([0, 1, 2, 3, 1])


def test_softmax_loss_by_hand():
    method = make("softmax", embedding_dim=3)
    z, labels = toy_embeddings(method)
    w = method.classifier.weight.tolist()
    logits = [[sum(a * b for a, b in zip(zi, wc)) for wc in w] for zi in z.tolist()]
    assert method.loss(z, labels).item() == pytest.approx(cross_entropy_by_hand(logits, labels.tolist()), rel=1e-5)
    assert not hasattr(method, "temp")


def cosines_by_hand(z, w):
    cos = lambda a, b: sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))  # noqa: E731
    return [[cos(zi, wc) for wc in w] for zi in z]


def test_cosine_softmax_loss_by_hand():
    method = make("cosine_softmax", embedding_dim=3, init_temp=-1.5)
    z, labels = toy_embeddings(method)
    logits = [[c / math.exp(-1.5) for c in row] for row in cosines_by_hand(z.tolist(), method.classifier.weight.tolist())]
    assert method.loss(z, labels).item() == pytest.approx(cross_entropy_by_hand(logits, labels.tolist()), rel=1e-5)


def test_arcface_loss_by_hand_and_warmup():
    method = make("arcface", embedding_dim=3, init_temp=-1.0, margin=0.5, warmup_epochs=2, epochs=5)
    z, labels = toy_embeddings(method)
    cos = cosines_by_hand(z.tolist(), method.classifier.weight.tolist())
    beta = math.exp(1.0)

    def by_hand(margin):
        logits = [[beta * (math.cos(math.acos(c) + margin) if j == y else c) for j, c in enumerate(row)]
                  for row, y in zip(cos, labels.tolist())]
        return cross_entropy_by_hand(logits, labels.tolist())

    for epoch, margin in ((0, 0.0), (1, 0.0), (2, 0.5), (4, 0.5)):
        method.on_epoch_start(epoch, None)
        assert method.current_margin() == margin
        assert method.loss(z, labels).item() == pytest.approx(by_hand(margin), rel=1e-5)
    cosine = make("cosine_softmax", embedding_dim=3, init_temp=-1.0)
    cosine.classifier.weight.data.copy_(method.classifier.weight.data)
    method.on_epoch_start(0, None)
    torch.testing.assert_close(method.loss(z, labels), cosine.loss(z, labels))  # warm-up: cosine softmax
    # the clamp keeps acos finite at cos = +-1
    edge = arcface_logits(torch.tensor([[1.0, -1.0]]), torch.tensor([0]), 0.5, 2.0)
    assert torch.isfinite(edge).all() and edge[0, 0].item() == pytest.approx(2 * math.cos(0.5), abs=1e-3)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        make("arcface", warmup_epochs=5, epochs=5)


# --- probabilities, parameter groups -------------------------------------------------------


@pytest.mark.parametrize("name", FAMILY)
def test_probs(name):
    method = make(name, embedding_dim=3).eval()
    images = image_batches(3, n_batches=1)[0]["images"]
    with torch.no_grad():
        probs = method.embed(images, "probs")
        assert probs.shape == (16, 4) and (probs >= 0).all()
        torch.testing.assert_close(probs.sum(1), torch.ones(16))
        state = torch.random.get_rng_state()
        torch.testing.assert_close(method.embed(images, "probs"), probs)  # reproducible (vMF: seeded draws)
        assert torch.equal(torch.random.get_rng_state(), state)  # and the global RNG is left alone
        if name != "vmf":
            torch.testing.assert_close(probs, F.softmax(method.logits(method.embed(images, "head")), dim=1))


def test_vmf_probs_are_the_monte_carlo_average():
    method = make("vmf", embedding_dim=3, n_samples=10).eval()
    images = image_batches(4, n_batches=1)[0]["images"]
    with torch.no_grad():
        z = method.embed(images, "head")
        torch.manual_seed(method.predict_seed)
        logits = method.logits(z)  # (B, S, C): one draw of z and of every class per (example, sample)
        assert logits.shape == (16, 10, 4)
        torch.testing.assert_close(method.embed(images, "probs"), F.softmax(logits, dim=2).mean(1))
        # concentrated distributions: the sampled probabilities approach the softmax of the means
        z_sharp = 1e6 * F.normalize(z, dim=1)
        method.classifier.weight.mul_(1e6 / method.classifier.weight.norm(dim=1, keepdim=True))
        logits = F.normalize(z, dim=1) @ F.normalize(method.classifier.weight, dim=1).T * method.beta
        torch.testing.assert_close(method.probs(z_sharp), F.softmax(logits, dim=1), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", FAMILY)
def test_param_groups(name):
    method = make(name, embedding_dim=3)
    groups = method.param_groups()
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len(list(method.parameters())) == len({id(p) for p in params})
    decay, no_decay = groups[0], groups[1]
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0
    assert any(p is method.head.weight for p in decay["params"])
    assert any(p is method.classifier.weight for p in no_decay["params"])
    assert all(p.ndim > 1 for p in decay["params"])
    if name == "softmax":
        assert len(groups) == 2
        return
    temp = groups[2]
    assert temp["params"] == [method.temp] and temp["lr"] == 1e-3 and temp["momentum"] == 0.0 and temp["weight_decay"] == 0.0
    # through the loop's optimizer: the temperature keeps its own lr under the schedule
    spec = {"train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.99, "nesterov": True, "weight_decay": 1e-4}}
    opt = _optimizer(spec, method)
    _set_learning_rate(opt, 0.025)
    assert [g["lr"] for g in opt.param_groups] == [0.025, 0.025, 1e-3]
    assert [g["momentum"] for g in opt.param_groups] == [0.99, 0.99, 0.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0, 0.0]


def test_vmf_training_step_through_epoch_start():
    """The loop's order: on_epoch_start (sets m_z), then training steps; the loss falls."""
    method = make("vmf", embedding_dim=3).train()
    batches = image_batches(5, n_batches=2, size=32)
    for b in batches:
        b["labels"] = torch.arange(4).repeat_interleave(8)
        b["images"][torch.arange(32), 0, b["labels"] * 6 + 2, :] += 0.7
    method.on_epoch_start(0, lambda: iter(batches))
    # m_z * E|f_j| = c/(1-c^2)(d-1)/sqrt(d): the instance kappas start near the class kappas
    with torch.no_grad():
        kappa_z = method.embedding(batches[0]["images"]).norm(dim=1).mean().item()
    assert 0.3 < kappa_z / method.classifier.weight.norm(dim=1).mean().item() < 3
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(0)
    losses = []
    for _ in range(15):
        loss, logs = method.training_step(batches[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert "beta" in logs and np.mean(losses[-3:]) < np.mean(losses[:3])
