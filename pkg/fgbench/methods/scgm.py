"""SCGM (Ni et al., "Superclass-Conditional Gaussian Mixture Model for Learning Fine-Grained
Embeddings from Coarse Labels", ICLR 2022): SCGM-G on a plain encoder, SCGM-A on ANCOR's
momentum encoder.

The probabilistic model (shared): e is the 128-d embedding, N(v) = v / ||v||,

    p(z=k | x)   = softmax_k( N(e) . N(mu_z_k) / tau )
    p(y=c | z=k) = softmax_c( N(mu_y_c) . N(mu_z_k) )       (no temperature)

with free means mu_y (C x 128, superclasses) and mu_z (K x 128, subclasses), Glorot-uniform
initialised. An E-step every ``n_iter_estep`` epochs computes P_ik = p(z=k|x_i) p(y_i|z=k) for
every training sample and turns it into hard, equal-size subclass pseudo-labels with
Sinkhorn-Knopp (``sinkhorn_knopp``); the M-step is the loss of each method's ``training_step``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import broadcast_from_main, gather_uneven
from .base import Method, register_method
from .contrastive import ANCOR, SHARED_DEVIATIONS


def sinkhorn_knopp(log_p: torch.Tensor, lam: float = 25.0, tol: float = 0.1, max_iter: int = 1_000_000) -> torch.Tensor:
    """Equal-size partition of N samples into K clusters: Asano et al.'s ``optimize_l_sk``
    (self-label, ICLR 2020), as SCGM's ``sinkhornknopp.py`` runs it, from log-probabilities.

    The original works on Q = P**lam in float64: it alternates r_k = (1/K) / sum_i Q_ik c_i and
    c_i = (1/N) / sum_k r_k Q_ik from c = 1/N, stops when sum_i |c_i / c_i_new - 1| < ``tol``
    (checked on the first and then every 10th iteration), and labels z_i = argmax_k Q_ik r_k.
    The original underflows: P < 1e-12.3 gives Q = 0, and a row or column of zeros gives NaN.
    Here log Q = lam * log P, and the same recursion runs

    - on Q'_ik = Q_ik / max_k Q_ik (each row's maximum is 1, so no row underflows) with
      c'_i = c_i max_k Q_ik, the first half-step in log space. r, c/c_new, the error, the
      iteration count and the labels equal the original's in exact arithmetic;
    - if that over- or underflows anyway (a whole column ~1e-300 below every row's maximum), on
      log r, log c with log-sum-exp: the same iterates again, about 20x slower on a CPU.

    Runs in float64 on ``log_p``'s device.

    Args:
        log_p: (N, K) log P_ik (any constant offset per row or overall leaves the labels unchanged).
        lam: the exponent lambda (SCGM's ``--lmd``).
        tol: stopping threshold on the change of c.
        max_iter: safety stop; raises RuntimeError rather than loop forever (the original has none).
    Returns:
        (N,) long tensor of cluster labels.
    """
    if log_p.ndim != 2 or not torch.isfinite(log_p).all():
        raise ValueError("sinkhorn_knopp needs a finite (N, K) matrix of log-probabilities")
    log_q = lam * log_p.double()
    log_r, _ = _sinkhorn_rescaled(log_q, tol, max_iter) or _sinkhorn_log(log_q, tol, max_iter)
    return (log_q + log_r[None, :]).argmax(dim=1)


def _sinkhorn_rescaled(log_q, tol, max_iter):
    """``optimize_l_sk`` on the row-rescaled Q'; (log r, iterations), or None on over/underflow."""
    n, k = log_q.shape
    row_max = log_q.amax(dim=1)
    q = torch.exp(log_q - row_max[:, None])  # (N, K), every row's maximum is 1
    log_c0 = row_max - math.log(n)  # log c'_0 = log(e^max_i / N): too large to exponentiate
    r = torch.exp(-math.log(k) - torch.logsumexp(log_q - math.log(n), dim=0))  # iteration 0
    c = (1.0 / n) / (q @ r)
    err, it = (torch.exp(log_c0 - torch.log(c)) - 1).abs().sum().item(), 1
    while True:
        if not (math.isfinite(err) and torch.isfinite(r).all() and (r > 0).all() and torch.isfinite(c).all()
                and (c > 0).all()):
            return None  # inf, 0 and NaN persist once they appear, so checking here suffices
        if err <= tol:
            return torch.log(r), it
        _check_iterations(it, max_iter, err)
        r = (1.0 / k) / (q.T @ c)
        c_new = (1.0 / n) / (q @ r)
        if it % 10 == 0:
            err = (c / c_new - 1).abs().sum().item()
        c, it = c_new, it + 1


def _sinkhorn_log(log_q, tol, max_iter):
    """``optimize_l_sk`` on log r and log c; (log r, iterations)."""
    n, k = log_q.shape
    log_c = torch.full((n,), -math.log(n), dtype=torch.float64, device=log_q.device)
    err, it = math.inf, 0
    while err > tol:
        _check_iterations(it, max_iter, err)
        log_r = -math.log(k) - torch.logsumexp(log_q + log_c[:, None], dim=0)  # (K,)
        log_c_new = -math.log(n) - torch.logsumexp(log_q + log_r[None, :], dim=1)  # (N,)
        if it % 10 == 0:
            err = (torch.exp(log_c - log_c_new) - 1).abs().sum().item()
        log_c, it = log_c_new, it + 1
    return log_r, it


def _check_iterations(it, max_iter, err):
    if it >= max_iter:
        raise RuntimeError(f"sinkhorn_knopp did not converge in {max_iter} iterations (error {err:.3g})")


def subclass_log_joint(e, y, mu_y, mu_z, tau: float) -> torch.Tensor:
    """log P_ik = log p(z=k | x_i) + log p(y_i | z=k), shape (B, K): the E-step's input.

    p(z=k|x) = softmax_k(N(e) . N(mu_z_k) / tau); p(y=c|z=k) = softmax over superclasses c of
    N(mu_y_c) . N(mu_z_k), no temperature. Every k is scored, not only the subclasses "of" y_i.
    """
    log_pz_x = F.log_softmax(F.normalize(e, dim=1) @ F.normalize(mu_z, dim=1).T / tau, dim=1)
    return log_pz_x + log_superclass_given_subclass(mu_y, mu_z)[y]


def log_superclass_given_subclass(mu_y, mu_z) -> torch.Tensor:
    """(C, K) log p(y=c | z=k): each column is a softmax over the C superclasses."""
    return F.log_softmax(F.normalize(mu_y, dim=1) @ F.normalize(mu_z, dim=1).T, dim=0)


def coarse_posterior(e, mu_y, mu_z, tau: float) -> torch.Tensor:
    """(B, C) p(y | x) = sum_k p(z=k|x) p(y|z=k): SCGM's monitored coarse prediction."""
    pz_x = F.softmax(F.normalize(e, dim=1) @ F.normalize(mu_z, dim=1).T / tau, dim=1)
    return pz_x @ log_superclass_given_subclass(mu_y, mu_z).exp().T


@torch.no_grad()
def scgm_accuracy(e, y, mu_y, mu_z, tau: float) -> float:
    """Coarse accuracy of argmax_y p(y | x), as the released scripts monitor it."""
    return (coarse_posterior(e.float(), mu_y.float(), mu_z.float(), tau).argmax(1) == y).float().mean().item()


def glorot(rows: int, cols: int) -> nn.Parameter:
    """U(-a, a) with a = sqrt(6 / (rows + cols)): SCGM's ``glorot``, i.e. Xavier-uniform."""
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(rows, cols)))


class SubclassEM:
    """The E-step shared by SCGM-G and SCGM-A (mixed into a Method).

    The host defines ``mu_y``, ``mu_z``, ``tau`` (the subclass temperature of p(z|x)), ``lam``,
    ``sinkhorn_tol``, ``n_iter_estep``, the buffer ``subclass_labels`` (one per training sample,
    in the state dict so a resumed run continues bit-exactly) and ``estep_embedding(images)``.
    """

    def init_subclass_labels(self, num_samples: int) -> None:
        # Zeros until the E-step of epoch 0 overwrites them; the released code has no value at all
        # before its first E-step (it crashes with n_iter_estep = 1, where none ever runs).
        self.register_buffer("subclass_labels", torch.zeros(num_samples, dtype=torch.long))

    def on_epoch_start(self, epoch: int, batches) -> None:
        """E-step on 0-based epochs 0, n, 2n, ... (the released ``epoch % n == 1`` on 1-based
        epochs: 1, 6, 11, ... for n = 5; with n = 1 it runs every epoch instead of crashing)."""
        if epoch % self.n_iter_estep == 0:
            self.e_step(batches())

    @torch.no_grad()
    def e_step(self, batches) -> None:
        """One pass over ``batches`` (dicts with images, labels, index) in the model's current
        mode (the loop calls it in train mode, as the released code: augmented views, BN batch
        statistics, BN running stats updated), then Sinkhorn; labels are stored by ``index``.
        Samples the pass does not visit keep their previous label.

        Under DDP each rank embeds its part of every batch; Sinkhorn's equal-size partition is
        over all samples, so the rows of all ranks are gathered first, and rank 0's labels are
        broadcast (Sinkhorn's argmax must give every rank the same pseudo-labels)."""
        log_p, index = [], []
        for batch in batches:
            e = self.estep_embedding(batch["images"]).float()
            log_p.append(subclass_log_joint(e, batch["labels"], self.mu_y.float(), self.mu_z.float(), self.tau))
            index.append(batch["index"])
        if not index:
            return
        log_p, index = gather_uneven(torch.cat(log_p)), gather_uneven(torch.cat(index))
        labels = broadcast_from_main(sinkhorn_knopp(log_p, self.lam, self.sinkhorn_tol))
        self.subclass_labels[index.to(self.subclass_labels.device)] = labels.to(self.subclass_labels.device)


@register_method("scgm_g")
class ScgmG(SubclassEM, Method):
    """SCGM-G: a trunk, an embedding head and the SCGM likelihood (released
    ``train_scgm_g.py`` + ``scgm_g/scgm_resnet.py``).

    Head ``fc_enc``: Linear(d, d) -> ReLU -> Linear(d, embedding_dim) (``mlp=True``, the default:
    the released ``--mlp`` flag is ``store_false``, so the MLP is on unless it is passed), or one
    Linear with ``mlp=False``. With ê = N(e), μ̂ = N(μ) and z_i the pseudo-label of sample i:

        L1 = CE(ê . μ̂_z^T / tau, z_i)          "subclass": subclass assignment
        L2 = -mean_i log p(y_i | z = z_i)       "superclass": superclass given subclass
        L3 = CE(ReLU(ê) . mu_y^T, y_i)          "cls": coarse classifier, UN-normalised mu_y
        L  = alpha (L1 + L2) + L3

    ``ang_norm=True`` (off by default, as released) replaces L1's logits by
    N(ê - μ̂_y[y_i]) . N(μ̂_z_k - μ̂_y[y_i]) / tau. The self-distillation terms (``--beta`` < 1,
    off by default) are not implemented. The E-step embeds the training batches as they come
    (one augmented view, train-mode BN), as the released code does.

    Args:
        num_classes: C superclasses. num_samples: training-set size (pseudo-label buffer).
        n_subclasses: K (100). embedding_dim: embedding size (128). mlp: MLP head (True). tau: subclass
        temperature / variance (0.1). alpha: weight of L1 + L2 (0.5). lam: Sinkhorn exponent (25).
        n_iter_estep: epochs between E-steps (5). sinkhorn_tol: Sinkhorn stopping threshold (0.1).
        ang_norm: angular normalisation of L1 (False).
    """

    labels = "coarse"
    layers = ("backbone", "head")
    default_layer = "head"
    views = 1
    training_only = ("subclass_labels",)
    meta = {
        "paper": "Ni et al., ICLR 2022 (SCGM-G)",
        "code": "nijingchao/SCGM @ c6b14b8",
        "deviations": [
            "E-step on 0-based epochs 0, n, 2n, ... (the released epoch % n == 1 on 1-based epochs: the same "
            "epochs); with n_iter_estep = 1 it runs every epoch (the released script crashes)",
            "Sinkhorn-Knopp on a row-rescaled Q, log space as fallback (same iterates in exact arithmetic; "
            "P**25 cannot underflow)",
            "self-distillation terms (beta < 1, off by default in the paper's runs) not implemented",
            "pseudo-labels of samples an E-step does not visit are kept (released: reset to a zero row)",
        ],
    }

    def __init__(self, backbone, *, num_classes: int, num_samples: int, n_subclasses: int = 100,
                 embedding_dim: int = 128, mlp: bool = True, tau: float = 0.1, alpha: float = 0.5,
                 lam: float = 25.0, n_iter_estep: int = 5, sinkhorn_tol: float = 0.1, ang_norm: bool = False):
        super().__init__(backbone)
        d = backbone.out_dim
        self.fc_enc = (nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, embedding_dim)) if mlp
                       else nn.Linear(d, embedding_dim))
        self.mu_y = glorot(num_classes, embedding_dim)
        self.mu_z = glorot(n_subclasses, embedding_dim)
        self.tau, self.alpha, self.lam, self.sinkhorn_tol = tau, alpha, lam, sinkhorn_tol
        self.n_iter_estep, self.ang_norm = n_iter_estep, ang_norm
        self.init_subclass_labels(num_samples)

    def forward(self, images):
        return self.fc_enc(self.backbone(images))

    def estep_embedding(self, images):
        return self(images)

    def loss_terms(self, e, y, z) -> dict:
        """The M-step terms for embeddings ``e``, superclasses ``y`` and subclass pseudo-labels
        ``z``: ``subclass`` (L1), ``superclass`` (L2) and ``cls`` (L3)."""
        e_hat, mu_z_hat = F.normalize(e, dim=1), F.normalize(self.mu_z, dim=1)
        if self.ang_norm:
            mu_y_own = F.normalize(self.mu_y, dim=1)[y]  # (B, D)
            q = F.normalize(e_hat - mu_y_own, dim=1)
            centred = F.normalize(mu_z_hat[None, :, :] - mu_y_own[:, None, :], dim=2)  # (B, K, D)
            logits_z = (centred @ q[:, :, None]).squeeze(2) / self.tau
        else:
            logits_z = e_hat @ mu_z_hat.T / self.tau
        return {
            "subclass": F.cross_entropy(logits_z, z),
            "superclass": -log_superclass_given_subclass(self.mu_y, self.mu_z)[y, z].mean(),
            "cls": F.cross_entropy(F.relu(e_hat) @ self.mu_y.T, y),
        }

    def training_step(self, batch):
        e, y = self(batch["images"]), batch["labels"]
        terms = self.loss_terms(e, y, self.subclass_labels[batch["index"]])
        loss = self.alpha * (terms["subclass"] + terms["superclass"]) + terms["cls"]
        logs = {f"{name}_loss": term.item() for name, term in terms.items()}
        logs["train_accuracy"] = scgm_accuracy(e, y, self.mu_y, self.mu_z, self.tau)
        return loss, logs

    def embed(self, images, layer=None):
        features = self.backbone(images)
        return features if self.check_layer(layer) == "backbone" else self.fc_enc(features)


@register_method("scgm_a")
class ScgmA(SubclassEM, ANCOR):
    """SCGM-A: SCGM on ANCOR's momentum encoder (released ``train_scgm_a.py`` + ``scgm_a/``).

    ANCOR (see ``contrastive.ANCOR``) with the ``seq_em`` head: the projector's last Linear (fc1)
    gives e; there is no fc2, the coarse logits are ReLU(N(e)) . mu_y^T (``head_norm=True``, the
    released default; ReLU(e) . mu_y^T otherwise), un-normalised mu_y, no temperature. Losses:

        ls1 "cls"       = CE(logits, y)
        ls2 "contrast"  = ANCOR's angular per-class contrast (T = ``temperature``), class weights
                          mu_y (detached)
        ls3 "subclass"  = CE(N(e) . N(mu_z)^T / tau1, z_i)
        ls4 "two_class" = CE(N(mu_z[z_i]) . N(mu_y)^T / tau2, y_i)
        L = ls1 + ls2 + alpha (ls3 + ls4)

    E-step as SCGM-G, with tau1 and the query-encoder embedding e of view 1.

    ``release_compat``: by default mu_z and mu_y receive gradients through ls3 and ls4, as the
    paper describes. The released code reads mu_y and mu_z through ``.clone().detach()`` in every
    loss calculator, so ls4 has no gradient at all, mu_z never trains (it keeps its random init;
    with no gradient SGD also skips its weight decay) and mu_y trains only through ls1.
    ``release_compat=True`` reproduces that: ls3 and ls4 use detached means and mu_z is frozen
    (``requires_grad=False``).

    Args:
        num_classes: C. num_samples: training-set size. n_subclasses: K (100). embedding_dim: 128.
        mlp: MLP before fc1 (True). queue_size: 65536 keys per class. momentum: 0.999.
        temperature: contrast temperature (cst_t, 0.2). metric: "angular" (or "norm").
        tau1: subclass temperature (0.1). tau2: superclass temperature of ls4 (1.0).
        alpha: weight of ls3 + ls4 (0.5). lam: Sinkhorn exponent (25). n_iter_estep: 5.
        sinkhorn_tol: 0.1. head_norm: N(e) in the class logits (True). release_compat: False.
    """

    layers = ("backbone", "head", "logits")
    default_layer = "head"  # SCGM evaluates the 128-d embedding
    meta = {
        "paper": "Ni et al., ICLR 2022 (SCGM-A)",
        "code": "nijingchao/SCGM @ c6b14b8",
        "deviations": SHARED_DEVIATIONS + [
            "queues stored (C, K, dim) instead of (C, dim, K); per-class negatives computed class by class "
            "(same values)",
            "mu_y and mu_z learn through ls3 and ls4 as in the paper; the released code detaches them in "
            "every loss (mu_z frozen at its random init, ls4 constant, mu_y trained only by ls1): "
            "release_compat=True reproduces that",
            "keys of the whole batch enter the queues and shuffle-BN follows ANCOR's DDP version (released "
            "SCGM-A: DataParallel, only GPU 0's keys are enqueued, no shuffle-BN)",
            "no second, gradient-building query forward after the optimiser step (the released script runs "
            "one for logging; it also updated BN statistics a second time)",
            "E-step on 0-based epochs 0, n, 2n, ... (the released epoch % n == 1 on 1-based epochs)",
            "Sinkhorn-Knopp on a row-rescaled Q, log space as fallback (same iterates in exact arithmetic; "
            "P**25 cannot underflow)",
            "the unused --cls-t (1.0, never applied in the released code) is not a parameter",
        ],
    }

    training_only = ANCOR.training_only + ("subclass_labels",)

    def __init__(self, backbone, *, num_classes: int, num_samples: int, n_subclasses: int = 100,
                 embedding_dim: int = 128, mlp: bool = True, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.2, metric: str = "angular", tau1: float = 0.1, tau2: float = 1.0,
                 alpha: float = 0.5, lam: float = 25.0, n_iter_estep: int = 5, sinkhorn_tol: float = 0.1,
                 head_norm: bool = True, release_compat: bool = False):
        super().__init__(backbone, num_classes=num_classes, embedding_dim=embedding_dim, mlp=mlp, queue_size=queue_size,
                         momentum=momentum, temperature=temperature, metric=metric)
        del self.classifier  # seq_em has no fc2: mu_y is the classifier
        self.mu_y = glorot(num_classes, embedding_dim)
        self.mu_z = glorot(n_subclasses, embedding_dim)
        if release_compat:
            self.mu_z.requires_grad_(False)
        self.tau, self.tau2, self.alpha, self.lam, self.sinkhorn_tol = tau1, tau2, alpha, lam, sinkhorn_tol
        self.n_iter_estep, self.head_norm, self.release_compat = n_iter_estep, head_norm, release_compat
        self.init_subclass_labels(num_samples)
        self.term_weights = {"subclass": alpha, "two_class": alpha}

    # --- ANCOR hooks ------------------------------------------------------------------------------
    def classify(self, e):
        return F.relu(F.normalize(e, dim=1) if self.head_norm else e) @ self.mu_y.T

    def class_weights(self):
        return self.mu_y

    def loss_terms(self, batch, e, logits, k) -> dict:
        terms = super().loss_terms(batch, e, logits, k)  # cls (ls1), contrast (ls2)
        y, z = batch["labels"], self.subclass_labels[batch["index"]]
        mu_y, mu_z = (self.mu_y.detach(), self.mu_z.detach()) if self.release_compat else (self.mu_y, self.mu_z)
        mu_y_hat, mu_z_hat = F.normalize(mu_y, dim=1), F.normalize(mu_z, dim=1)
        terms["subclass"] = F.cross_entropy(F.normalize(e, dim=1) @ mu_z_hat.T / self.tau, z)
        terms["two_class"] = F.cross_entropy(mu_z_hat[z] @ mu_y_hat.T / self.tau2, y)
        return terms

    def estep_embedding(self, images):
        return self.query(images)[0]

