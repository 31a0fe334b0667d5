"""The von Mises-Fisher loss (Scott, Gallagher, Mozer, "von Mises-Fisher Loss: An Exploration
of Embedding Geometries for Supervised Learning", ICCV 2021, arXiv 2103.15718) and the
deterministic softmax baselines of its tables: standard softmax, cosine softmax, ArcFace.

Architecture, shared by all four (the paper's ``remap`` + ``classifier``): the backbone, then
``head`` = Linear(backbone.out_dim, embedding_dim) with zero bias, whose output z is the
embedding, then the class weights W = Linear(embedding_dim, C, bias=False). On ``small_cnn``
(120-d) this is the paper's ``NDigitMNISTArch`` exactly. Layers: ``backbone``, ``head`` (z) and
``probs`` (class probabilities, for the ``closed_set`` protocol; not an embedding).

Optimisation (``utils.get_parameter_list``): three parameter groups, weights with the configured
weight decay; biases, 1-d parameters and the class weights without; the temperature (cosine
softmax, ArcFace, vMF) with its own fixed learning rate ``temp_lr``, no momentum, no decay.

The vMF machinery (sampler, Bessel approximations) is written here in torch: Wood's (Ulrich's)
algorithm as reparameterised in s-vae (Davidson et al., UAI 2018), with the exact inverse CDF
for d = 3.
"""

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.backbones import SmallCNN
from ..distributed import global_batch, is_main, sum_over_ranks
from .base import Method, register_method

PAPER = "Scott, Gallagher, Mozer, von Mises-Fisher Loss, ICCV 2021 (arXiv 2103.15718)"
CODE = "google-research/google-research vmf_embeddings"

# ---------------------------------------------------------------------------------------------
# vMF distribution: Bessel approximations and the reparameterised sampler


def bessel_ratio_approx(kappa, d: int):
    """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa), the mean resultant length of vMF(mu, kappa)
    on S^{d-1}, approximated as in the paper (from Ruiz-Antolin & Segura, arXiv 1606.02008):

        A_d(k) ~ 1/2 [k / (v- + sqrt(v+^2 + k^2)) + k / (v- + sqrt(v-^2 + k^2))],
        v- = d/2 - 1/2, v+ = d/2 + 1/2.

    Accurate for kappa >~ d (relative error < 1e-3) and for large d at any kappa; its worst
    relative error is the kappa -> 0 limit, 1 / (2 (d - 1)): 25% for d = 3, 0.4% for d = 128.
    """
    k2 = kappa**2
    vm, vp = d / 2 - 0.5, d / 2 + 0.5
    return 0.5 * (kappa / (vm + torch.sqrt(vp**2 + k2)) + kappa / (vm + torch.sqrt(vm**2 + k2)))


def log_vmf_normalizer_approx(kappa_sq, d: int):
    """log C_d(kappa), the log normaliser of the vMF density, up to a constant in d only, as a
    function of kappa^2 (the paper's approximation):

        1/2 [v- log(v- + sqrt(v-^2 + k^2)) - sqrt(v-^2 + k^2) + v- log(v- + sqrt(v+^2 + k^2)) - sqrt(v+^2 + k^2)]

    Its derivative in kappa is exactly -A_d(kappa) of ``bessel_ratio_approx`` (the exact
    identity d/dk log C_d = -A_d), so its error is the integral of A_d's: the offset to the exact
    value drifts by about 0.1 nat over all kappa (0.11 for d = 3, 0.10 for d = 128), most of it
    below kappa ~ d, where A_d is least accurate.
    """
    kappa_sq = kappa_sq.clamp(min=0)
    vm, vp = d / 2 - 0.5, d / 2 + 0.5
    sm, sp = torch.sqrt(vm**2 + kappa_sq), torch.sqrt(vp**2 + kappa_sq)
    return 0.5 * (vm * torch.log(vm + sm) - sm + vm * torch.log(vm + sp) - sp)


def _sample_w3(kappa):
    """w = <mu, x> for x ~ vMF(mu, kappa) on S^2, by the exact inverse CDF:
    w = 1 + log(u + (1 - u) exp(-2 kappa)) / kappa, u ~ U[0, 1). Returns 1 - w (exact near w = 1)
    and w; differentiable in kappa. log1p form for kappa <= 1, logsumexp form above. Each branch
    sees kappa where it is selected and 1 elsewhere (``torch.where``, not a clamp, whose gradient
    vanishes at the bound: kappa = 1 would get none), so the unused one stays finite, and so does
    its gradient."""
    u = torch.rand(kappa.shape, device=kappa.device, dtype=kappa.dtype)
    one = torch.ones_like(kappa)
    small = torch.where(kappa <= 1.0, kappa, one).clamp(min=1e-30)
    large = torch.where(kappa <= 1.0, one, kappa)
    log_small = torch.log1p((1 - u) * torch.expm1(-2 * small))
    log_large = torch.logaddexp(torch.log(u), torch.log1p(-u) - 2 * large)
    one_minus_w = -torch.where(kappa <= 1.0, log_small / small, log_large / large)
    return one_minus_w, 1 - one_minus_w


def wood_b(kappa, d: int, release_compat: bool = False):
    """Wood's b = (d-1) / (2k + sqrt(4k^2 + (d-1)^2)), the cancellation-free form of s-vae's
    (-2k + sqrt(4k^2 + (d-1)^2)) / (d-1).

    ``release_compat``: the vMF release's value (its copy of s-vae-pytorch, ``__sample_w_rej``),
    which blends towards the Taylor value (d-1) / (4k) over 10 < kappa < 11 and uses it alone for
    every kappa >= 11. That value is accurate only for kappa >> d: with it the sampler draws from
    a different distribution whenever d > 3 (d = 128, kappa = 50: E<mu, x> = 0.22 instead of
    A_d(50) = 0.345)."""
    m1 = d - 1.0
    b = m1 / (2 * kappa + torch.sqrt(4 * kappa**2 + m1**2))
    if not release_compat:
        return b
    s = (kappa - 10).clamp(0.0, 1.0)
    taylor = m1 / (4 * torch.where(kappa > 10, kappa, torch.full_like(kappa, 10.0)))  # finite at kappa = 0
    return torch.where(kappa > 10, s * taylor + (1 - s) * b, b)


def _sample_w_wood(kappa, d: int, max_rounds: int = 1000, release_compat: bool = False):
    """w = <mu, x> for x ~ vMF(mu, kappa) on S^{d-1}, d != 3, by Wood's rejection sampler
    (Wood 1994; the form of Davidson et al. 2018, Algorithm 1):

        b = (d-1) / (2k + sqrt(4k^2 + (d-1)^2)),  a = (d - 1 + 2k + sqrt(4k^2 + (d-1)^2)) / 4,
        c = 4ab / (1 + b) - (d-1) log(d-1); repeat e ~ Beta((d-1)/2, (d-1)/2), u ~ U(0, 1),
        t = 2ab / (1 - (1-b) e) until (d-1) log t - t + c >= log u; w = (1 - (1+b) e) / (1 - (1-b) e).

    The accepted e are drawn without gradient (float64); w is then a differentiable function of
    kappa with e fixed: s-vae's reparameterisation gradient (its correction term is dropped, as
    in s-vae-pytorch and the vMF code, so the kappa gradient is biased: d/dk E<mu, x> comes out
    20% low for d = 4, k = 2; 7% for d = 10, k = 5; 0.5% for d = 128, k = 50). ``b`` is exact for
    every kappa (``wood_b``), so no Taylor value is needed.
    ``release_compat``: the release's b (see ``wood_b``). Returns (1 - w, w)."""
    m1 = d - 1.0
    flat = kappa.reshape(-1)
    with torch.no_grad():
        k = flat.detach().double()
        root = torch.sqrt(4 * k**2 + m1**2)
        b = wood_b(k, d, release_compat)
        a = (m1 + 2 * k + root) / 4
        c = 4 * a * b / (1 + b) - m1 * math.log(m1)
        e = torch.full_like(k, float("nan"))  # non-finite kappa: w = NaN, a NaN loss the loop reports
        pending = torch.nonzero(torch.isfinite(k)).view(-1)
        beta = torch.distributions.Beta(torch.tensor(m1 / 2, dtype=k.dtype, device=k.device),
                                        torch.tensor(m1 / 2, dtype=k.dtype, device=k.device))
        for _ in range(max_rounds):
            if pending.numel() == 0:
                break
            e_ = beta.sample(pending.shape)
            u = torch.rand(pending.shape, dtype=k.dtype, device=k.device)
            bp = b[pending]
            t = 2 * a[pending] * bp / (1 - (1 - bp) * e_)
            accept = m1 * torch.log(t) - t + c[pending] >= torch.log(u)
            e[pending[accept]] = e_[accept]
            pending = pending[~accept]
        if pending.numel():
            raise RuntimeError(f"vMF rejection sampling: {pending.numel()} draws still rejected after {max_rounds} rounds")
    e = e.to(flat.dtype)
    b = wood_b(flat, d, release_compat)  # with gradient
    one_minus_w = 2 * b * e / (1 - (1 - b) * e)
    return one_minus_w.view(kappa.shape), (1 - one_minus_w).view(kappa.shape)


def _rotate_from_e1(x, mu):
    """Apply an orthogonal map Q with Q e1 = mu to x (..., d): the Householder reflection along
    e1 - mu when mu_1 <= 0, minus the one along e1 + mu otherwise (both send e1 to mu; the choice
    keeps |u|^2 = 2 (1 + |mu_1|) >= 2, where s-vae adds 1e-5 to |u|). A sample around e1 maps to
    the same distribution around mu, the vMF density depending only on <x, mu>."""
    sign = torch.where(mu[..., :1] > 0, -1.0, 1.0).to(mu.dtype)
    u = -sign * mu
    u = torch.cat([u[..., :1] + 1, u[..., 1:]], dim=-1)  # e1 - sign * mu
    reflected = x - 2 * (x * u).sum(-1, keepdim=True) / (u * u).sum(-1, keepdim=True) * u
    return sign * reflected


def sample_vmf(mu, kappa, n_samples: int, release_compat: bool = False):
    """``n_samples`` reparameterised draws from vMF(mu, kappa): (n_samples, *batch, d) unit
    vectors for mu (*batch, d) of unit rows and kappa (*batch, 1) or (*batch,). Gradients flow
    to mu and kappa. Uses the global torch RNG (seed it, or fork it, for reproducible draws).
    ``release_compat``: the vMF release's biased b for d != 3 (``wood_b``)."""
    d = mu.shape[-1]
    if d < 2:
        raise ValueError("vMF sampling needs d >= 2")
    kappa = kappa.reshape(mu.shape[:-1])
    kappa = kappa.expand(n_samples, *kappa.shape)
    one_minus_w, w = _sample_w3(kappa) if d == 3 else _sample_w_wood(kappa, d, release_compat=release_compat)
    v = F.normalize(torch.randn(*kappa.shape, d - 1, device=mu.device, dtype=mu.dtype), dim=-1)
    radius = torch.sqrt((one_minus_w * (2 - one_minus_w)).clamp(min=1e-10)).unsqueeze(-1)
    x = torch.cat([w.unsqueeze(-1), radius * v], dim=-1)
    return _rotate_from_e1(x, mu.expand(n_samples, *mu.shape))


@contextmanager
def seeded_rng(device, seed: int):
    """The global RNG of ``device`` (and the CPU's) seeded with ``seed`` inside the block and
    restored after it."""
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------
# Losses as functions of tensors


def vmf_loss_from_samples(z, z_samples, weights, labels, beta):
    """The vMF loss for embeddings z (B, d) with draws z_samples (S, B, d) of
    vMF(z/|z|, |z|), class weights W (C, d) (w_c is the class distribution vMF(w_c/|w_c|, |w_c|))
    and logit scale beta:

        l = 1/S sum_s logsumexp_c [log C_d(|w_c|) - log C_d(|w_c + beta z~_s|)]
            - beta <A_d(|z|) z/|z|, A_d(|w_y|) w_y/|w_y|>,

    with |w_c + beta z~|^2 = |w_c|^2 + beta^2 + 2 beta <z~, w_c>. The first term is
    log sum_c E[exp(beta <z~, w~_c>)] in closed form (over the class distributions), the second
    E[beta <z~, w~_y>]. Averaged over the batch. The paper's code takes log(sum(exp(.))); this
    is the logsumexp."""
    d = z.shape[1]
    kappa_w_sq = (weights**2).sum(1)
    arg = kappa_w_sq + beta**2 + 2 * beta * torch.einsum("sbd,cd->bsc", z_samples, weights)
    first = torch.logsumexp(log_vmf_normalizer_approx(kappa_w_sq, d) - log_vmf_normalizer_approx(arg, d), dim=2).mean(1)
    kappa_z = z.norm(dim=1, keepdim=True)
    mean_z = z / kappa_z.clamp(min=1e-12) * bessel_ratio_approx(kappa_z, d)
    w_y = weights[labels]
    kappa_y = w_y.norm(dim=1, keepdim=True)
    mean_y = w_y / kappa_y.clamp(min=1e-12) * bessel_ratio_approx(kappa_y, d)
    return (first - beta * (mean_z * mean_y).sum(1)).mean()


def arcface_logits(cosines, labels, margin: float, scale, eps: float = 1e-7):
    """ArcFace logits (Deng et al., CVPR 2019) as the vMF code has them: the target cosine
    becomes cos(arccos(clamp(cos_y, -1 + eps, 1 - eps)) + margin), then everything times
    ``scale``. No easy-margin or theta + m > pi correction (neither has the code)."""
    target = cosines.gather(1, labels[:, None])
    shifted = torch.cos(torch.acos(target.clamp(-1 + eps, 1 - eps)) + margin)
    return scale * cosines.scatter(1, labels[:, None], shifted)


# ---------------------------------------------------------------------------------------------
# Methods


@contextmanager
def _float32(device_type):
    """Autocast off: losses and samplers in float32 even under AMP."""
    with torch.autocast(device_type, enabled=False):
        yield


class SoftmaxFamily(Method):
    """Backbone -> ``head`` (the paper's ``remap``: Linear to ``embedding_dim``, zero bias) ->
    class weights ``classifier`` (Linear(embedding_dim, C, bias=False)). Initialised as the
    release: Xavier-uniform weights on ``small_cnn`` (``NDigitMNISTArch``), torch's default Linear
    init on other backbones (its ResNet); zero head bias on both. Subclasses define ``logits(z)`` (deterministic predictions)
    and ``loss(z, labels)``. With ``learns_temp``, a learned temperature ``temp``: the logit
    scale is beta = 1 / exp(temp)."""

    labels = "supervised"
    layers = ("backbone", "head", "probs")
    default_layer = "head"
    learns_temp = False

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int, init_temp: float = 0.0,
                 temp_lr: float = 1e-3):
        super().__init__(backbone)
        self.head = nn.Linear(backbone.out_dim, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False)
        nn.init.zeros_(self.head.bias)
        if any(isinstance(m, SmallCNN) for m in backbone.modules()):  # NDigitMNISTArch: Xavier everywhere
            nn.init.xavier_uniform_(self.head.weight)
            nn.init.xavier_uniform_(self.classifier.weight)
        self.embedding_dim, self.temp_lr = embedding_dim, temp_lr
        if self.learns_temp:
            self.temp = nn.Parameter(torch.tensor(float(init_temp)))

    @property
    def beta(self):
        return torch.exp(-self.temp)

    def embedding(self, images):
        """z, the embedding (the layer before the classifier)."""
        return self.head(self.backbone(images))

    def logits(self, z):
        raise NotImplementedError

    def loss(self, z, labels):
        raise NotImplementedError

    def probs(self, z):
        return F.softmax(self.logits(z), dim=1)

    def training_step(self, batch):
        # Under DDP the loss is that of the global batch: the same per-sample terms, and vMF's
        # Monte-Carlo draws come from the global RNG, which is the same on every rank, so drawn
        # per slice every rank would draw the same noise for different samples.
        z, labels = global_batch(self.embedding(batch["images"]), batch["labels"])
        with _float32(z.device.type):
            loss = self.loss(z.float(), labels)
        logs = {"beta": self.beta.item()} if self.learns_temp else {}
        return loss, logs

    def embed(self, images, layer=None):
        layer = self.check_layer(layer)
        if layer == "backbone":
            return self.backbone(images)
        z = self.embedding(images)
        if layer == "head":
            return z
        with _float32(z.device.type):
            return self.probs(z.float())

    def param_groups(self):
        """The paper's three groups: weights (configured weight decay); biases, 1-d parameters
        and the class weights (no weight decay); the temperature (lr ``temp_lr``, fixed, no
        momentum, no weight decay)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or name == "temp":
                continue
            (no_decay if p.ndim <= 1 or name.endswith("bias") or name == "classifier.weight" else decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.learns_temp:
            groups.append({"params": [self.temp], "lr": self.temp_lr, "momentum": 0.0, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]


@register_method("softmax")
class Softmax(SoftmaxFamily):
    """Standard softmax cross-entropy (the paper's ``UnnormalizedSoftmaxCE``): logits z W^T,
    no temperature.

    Args:
        num_classes: C. embedding_dim: d, 128 (the paper's CIFAR ResNet-50; 3 on MNIST and
        Fashion-MNIST, 512 for retrieval).
    """

    meta = {"paper": f"baseline of {PAPER}", "code": CODE, "deviations": [
        "the class weights get no weight decay on every backbone (the code's name filter misses "
        "the MNIST network's classifier; its MNIST runs use weight decay 0)"]}

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128):
        super().__init__(backbone, num_classes=num_classes, embedding_dim=embedding_dim)

    def logits(self, z):
        return z @ self.classifier.weight.T

    def loss(self, z, labels):
        return F.cross_entropy(self.logits(z), labels)


@register_method("cosine_softmax")
class CosineSoftmax(SoftmaxFamily):
    """Cosine softmax cross-entropy (``NormalizedSoftmaxCE``): logits cos(z, w_c) / exp(temp),
    temp learned.

    Args:
        num_classes: C. embedding_dim: d, 128. init_temp: 0 (beta = 1; the paper's CUB and SOP
        runs use -2.773, beta ~ 16). temp_lr: the temperature's learning rate, 1e-3 (the
        paper's MNIST runs; 1e-2 for CIFAR-100 and retrieval).
    """

    learns_temp = True
    meta = Softmax.meta

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, init_temp: float = 0.0,
                 temp_lr: float = 1e-3):
        super().__init__(backbone, num_classes=num_classes, embedding_dim=embedding_dim, init_temp=init_temp,
                         temp_lr=temp_lr)

    def cosines(self, z):
        return F.normalize(z, dim=1) @ F.normalize(self.classifier.weight, dim=1).T

    def logits(self, z):
        return self.beta * self.cosines(z)

    def loss(self, z, labels):
        return F.cross_entropy(self.logits(z), labels)


@register_method("arcface")
class ArcFace(CosineSoftmax):
    """ArcFace (Deng et al., CVPR 2019) as the vMF paper's baseline: cosine logits, the target
    angle plus ``margin``, all times the learned beta = 1 / exp(temp) (see ``arcface_logits``).
    For the first ``warmup_epochs`` epochs the margin is 0 (the paper's runs: 20 on MNIST and
    Fashion-MNIST, 60 on CIFAR-10, 100 on CIFAR-100, none for pretrained retrieval backbones).
    Predictions (``probs``) use no margin.

    Written here rather than with pml's ``ArcFaceLoss``, which has a fixed scale (no learned
    temperature), owns its class weights and takes the margin in degrees.

    Args:
        num_classes: C. embedding_dim: d, 128. margin: 0.5 (radians). warmup_epochs: 0.
        init_temp: 0. temp_lr: 1e-3. epochs: the configured epochs (a warm-up as long as the
        run would never apply the margin: an error).
    """

    meta = {"paper": f"baseline of {PAPER}; Deng et al., CVPR 2019", "code": CODE,
            "deviations": Softmax.meta["deviations"]}

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, margin: float = 0.5,
                 warmup_epochs: int = 0, init_temp: float = 0.0, temp_lr: float = 1e-3, epochs: int = 1):
        super().__init__(backbone, num_classes=num_classes, embedding_dim=embedding_dim, init_temp=init_temp,
                         temp_lr=temp_lr)
        if warmup_epochs and warmup_epochs >= epochs:
            raise ConfigError(f"methods.arcface.params.warmup_epochs ({warmup_epochs}) must be below train.epochs "
                              f"({epochs}), or the margin is never used")
        self.margin, self.warmup_epochs, self.epoch = margin, warmup_epochs, 0

    def on_epoch_start(self, epoch, batches):
        self.epoch = epoch

    def current_margin(self) -> float:
        return 0.0 if self.epoch < self.warmup_epochs else self.margin

    def loss(self, z, labels):
        return F.cross_entropy(arcface_logits(self.cosines(z), labels, self.current_margin(), self.beta), labels)


@register_method("vmf")
class VMFSoftmax(SoftmaxFamily):
    """The vMF loss (``VMFSoftmax``). The embedding is z = m_z f(x), f(x) the ``head`` output
    and m_z a fixed multiplier; z stands for the instance distribution vMF(z/|z|, |z|), class
    weight w_c for vMF(w_c/|w_c|, |w_c|). Loss: ``vmf_loss_from_samples`` with ``n_samples``
    reparameterised draws (``sample_vmf``) and beta = 1 / exp(temp), temp learned.

    Initialisation (confidence c = ``kappa_confidence``, so that A_d(kappa) ~ c at the start):
    class weights ~ N(0, s^2), s = c / (1 - c^2) (d - 1) / sqrt(d); at the first
    ``on_epoch_start`` one no-grad pass over the training split (training batches, train mode,
    so batch-norm running statistics move, as in the paper's code) gives E|f_j(x)|, and
    m_z = (1 / E|f_j|) c / (1 - c^2) (d - 1) / sqrt(d). m_z is the buffer ``z_kappa_mult``
    (NaN until set; checkpoints and model.pt keep it; never recomputed once set); while unset,
    z = f(x) (the paper's initial multiplier 1).

    Predictions (``probs``, the paper's ``get_predictions``): ``n_samples`` draws z~_s of the
    instance distribution and, independently per example and per draw, one draw of every class
    distribution; probs = mean_s softmax_c(<z~_s, w~_{s,c}> / exp(temp)). Each ``embed`` call
    draws from the global RNG seeded with ``predict_seed`` (forked, so the caller's RNG is left
    alone): the same images in the same batch give the same probabilities; examples at the same
    position of different batches share their random stream (unbiased, though not independent).

    Args:
        num_classes: C. embedding_dim: d, 128. n_samples: 10. kappa_confidence: c, 0.4 (0.7 for
        the paper's retrieval runs). init_temp: 0. temp_lr: 1e-3. predict_seed: 1234 (the
        paper's seed). release_compat: false (exact sampler); true: the release's Taylor value of
        Wood's b for kappa >= 11, biased for d > 3 (``wood_b``).
    """

    learns_temp = True
    meta = {"paper": PAPER, "code": CODE, "deviations": [
        "logsumexp over classes where the code takes log(sum(exp(.)))",
        "Wood's b exact for every kappa, in its cancellation-free form (d-1) / (2k + sqrt(4k^2 + (d-1)^2)); "
        "the release takes the Taylor value (d-1) / (4k) for every kappa >= 11 (blended over 10-11), which "
        "draws from a different distribution for d > 3 (release_compat: true reproduces it)",
        "the rotation e1 -> mu uses the better-conditioned of two Householder reflections instead of adding 1e-5 to |e1 - mu|",
        "the class weights get no weight decay on every backbone (the code's name filter misses the "
        "MNIST network's classifier; its MNIST runs use weight decay 0)",
        "probs are reproducible: each embed call draws from the RNG seeded with predict_seed"]}

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, n_samples: int = 10,
                 kappa_confidence: float = 0.4, init_temp: float = 0.0, temp_lr: float = 1e-3,
                 predict_seed: int = 1234, release_compat: bool = False):
        super().__init__(backbone, num_classes=num_classes, embedding_dim=embedding_dim, init_temp=init_temp,
                         temp_lr=temp_lr)
        if release_compat not in (False, True):
            raise ConfigError(f"methods.vmf.params.release_compat must be true or false, got {release_compat!r}")
        self.release_compat = release_compat
        if not 0 < kappa_confidence < 1:
            raise ConfigError(f"methods.vmf.params.kappa_confidence must be in (0, 1), got {kappa_confidence}")
        if embedding_dim < 2:
            raise ConfigError("methods.vmf.params.embedding_dim must be at least 2 (a sphere S^{d-1})")
        self.n_samples, self.kappa_confidence, self.predict_seed = n_samples, kappa_confidence, predict_seed
        nn.init.normal_(self.classifier.weight, 0.0, self.kappa_scale())
        self.register_buffer("z_kappa_mult", torch.tensor(float("nan")))

    def kappa_scale(self) -> float:
        """c / (1 - c^2) (d - 1) / sqrt(d): the class weights' std, and m_z times E|f_j|."""
        c, d = self.kappa_confidence, self.embedding_dim
        return c / (1 - c**2) * (d - 1) / math.sqrt(d)

    def multiplier(self):
        m = self.z_kappa_mult
        return torch.where(torch.isnan(m), torch.ones_like(m), m)

    def embedding(self, images):
        return self.multiplier() * self.head(self.backbone(images))

    @torch.no_grad()
    def on_epoch_start(self, epoch, batches):
        if not torch.isnan(self.z_kappa_mult):
            return
        total, count = 0.0, 0
        for batch in batches():  # under DDP this rank's part of the training set
            f = self.head(self.backbone(batch["images"])).float()
            total += f.abs().sum().item()
            count += f.numel()
        total, count = sum_over_ranks(torch.tensor([total, count], dtype=torch.float64)).tolist()
        if count == 0:
            raise RuntimeError("vMF's z-kappa multiplier needs at least one training batch")
        mean_abs = total / count
        self.z_kappa_mult.fill_(self.kappa_scale() / mean_abs)
        if is_main():
            print(f"vmf: set z-kappa-mult {self.z_kappa_mult.item():.4f} (E|z_j| = {mean_abs:.4g})", flush=True)

    def loss(self, z, labels):
        kappa = z.norm(dim=1, keepdim=True)
        z_samples = sample_vmf(z / kappa.clamp(min=1e-12), kappa, self.n_samples, self.release_compat)
        return vmf_loss_from_samples(z, z_samples, self.classifier.weight.float(), labels, self.beta)

    def logits(self, z):
        """One Monte-Carlo set of logits (B, n_samples, C): <z~_s, w~_{s,c}> / exp(temp)."""
        n, (b, d) = self.n_samples, z.shape
        kappa = z.norm(dim=1, keepdim=True)
        z_samples = sample_vmf(z / kappa.clamp(min=1e-12), kappa, n, self.release_compat)  # (S, B, d)
        w = self.classifier.weight.float()
        kappa_w = w.norm(dim=1, keepdim=True)
        w_samples = sample_vmf(w / kappa_w.clamp(min=1e-12), kappa_w, b * n, self.release_compat).view(b, n, -1, d)  # (B, S, C, d)
        return torch.einsum("sbd,bscd->bsc", z_samples, w_samples) * self.beta

    def probs(self, z):
        # examples per chunk: about 2^24 sampled class-weight coordinates at a time
        chunk = max(1, 2**24 // (self.n_samples * self.classifier.out_features * self.embedding_dim))
        with seeded_rng(z.device, self.predict_seed):
            return torch.cat([F.softmax(self.logits(part), dim=2).mean(1) for part in z.split(chunk)])
