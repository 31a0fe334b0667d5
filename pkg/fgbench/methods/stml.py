"""STML: Self-Taught Metric Learning without Labels (Kim, Kim, Cho, Kwak, CVPR 2022), as the
released code (``tjddus9597/STML-CVPR22``: ``code/loss.py``, ``code/dataset/sampler.py``,
``code/main.py``) does it.

Student: backbone -> two linear heads, f (``embedding_dim``, the evaluated embedding) and g
(``g_dim`` = 1024). Teacher: a copy of the backbone with its own g head, frozen, always in eval
mode, moved towards the student by an exponential moving average after every step. No labels:
only the dataset index, which says which two crops are views of the same image.

Per step, on the 2B crops (both views concatenated) with teacher embeddings t and the index:

    W   = (1 - lam) W_P + lam W_C                  contextualised similarity (teacher, no grad)
    L   = 1/2 [L_RC(s_f, W) + L_RC(s_g, W)] + kl_weight * L_KL(s_f, s_g)

``contextual_similarity`` gives W, ``relaxed_contrastive_loss`` L_RC and
``distance_distillation`` L_KL. Batches are nearest-neighbour batches (``NNBatchSampler``):
seed images plus their nearest neighbours under the teacher's g embedding, rebuilt every epoch.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from ..errors import ConfigError
from ..models.backbones import set_global_pooling
from ..models.momentum import momentum_update
from ..distributed import broadcast_from_main, gather_uneven, global_batch
from .base import Method, register_method


# --- contextualised similarity ----------------------------------------------------------------
def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """(N, N) Euclidean distances, computed exactly (no matmul shortcut): the diagonal is 0 and
    its gradient is 0."""
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")


def k_reciprocal_neighbours(ranking: torch.Tensor, k: int) -> tuple:
    """k-reciprocal neighbours from a similarity ``ranking`` (N, N; larger is closer).

    N_k(i) is the top-``k`` of row i (ties broken by ``torch.topk``); j is a k-reciprocal
    neighbour of i when j is in N_k(i) and i is in N_k(j).

    Returns:
        (V, topk): V (N, N) float, V_ij = 1 iff j in R(i) (symmetric); topk (N, k) long, each
        row's top-k indices, best first.
    """
    topk = ranking.topk(k, dim=1).indices
    knn = torch.zeros_like(ranking).scatter_(1, topk, 1.0)
    return knn * knn.T, topk


def contextual_similarity(t: torch.Tensor, index: torch.Tensor, *, sigma: float = 3.0, k: int = 10,
                          lam: float = 0.5) -> torch.Tensor:
    """STML's contextualised semantic similarity W (N, N) of teacher embeddings ``t`` (N, d).

    With t̂ = t / |t| (``RC_STML.forward``):

    - W_P[i, j] = exp(-|t̂_i - t̂_j|^2 / sigma);
    - ranking: W_P with every pair of the same ``index`` (the image itself, its other view) set
      to 1, so both views rank first; N_k(i) its top-k, R(i) the k-reciprocal neighbours;
    - W̃_C[i, j] = |R(i) ∩ R(j)| / |R(i)| for j in R(i), else 0;
    - query expansion: Ŵ_C[i] = mean of W̃_C[n] over the round(k / 2) best-ranked n of row i
      (Python's round, as numpy's ``around``: half to even);
    - W_C = (Ŵ_C + Ŵ_Cᵀ) / 2 and W = (1 - lam) W_P + lam W_C (the code: lam = 1/2).

    An empty R(i) (only possible when more than k entries of row i tie at 1) gives a zero row
    instead of the code's division by zero. Computed in float32 without gradient.
    """
    with torch.no_grad(), torch.autocast(t.device.type, enabled=False):
        t = F.normalize(t.float(), dim=1)
        w_p = torch.exp(-pairwise_distances(t).pow(2) / sigma)
        ranking = w_p.clone()
        ranking[index.unsqueeze(1) == index.unsqueeze(0)] = 1.0
        v, topk = k_reciprocal_neighbours(ranking, k)
        w_c_tilde = (v @ v) * v / v.sum(1, keepdim=True).clamp(min=1)
        w_c_hat = w_c_tilde[topk[:, : round(k / 2)]].mean(1)
        w_c = (w_c_hat + w_c_hat.T) / 2
        return (1 - lam) * w_p + lam * w_c


# --- losses -----------------------------------------------------------------------------------
def normalised_distances(s: torch.Tensor) -> torch.Tensor:
    """Pairwise distances divided by their row mean (over all N entries, the zero diagonal
    included), as ``RC_STML`` and ``KL_STML`` do."""
    d = pairwise_distances(s)
    return d / d.mean(1, keepdim=True)


def relaxed_contrastive_loss(s: torch.Tensor, w: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Relaxed contrastive loss of student embeddings ``s`` (N, d) against soft labels ``w``:

        L_RC = 1 / (N (N - 1)) * sum_{i != j} [ w_ij d_ij^2 + (1 - w_ij) relu(delta - d_ij)^2 ]

    with d the row-normalised distances (``normalised_distances``)."""
    n = len(s)
    d = normalised_distances(s)
    off = 1.0 - torch.eye(n, device=s.device, dtype=d.dtype)
    w = w.to(d.dtype)
    pull = w * d.pow(2) * off
    push = (1 - w) * torch.relu(delta - d).pow(2) * off
    return (pull.sum() + push.sum()) / (n * (n - 1))


def distance_distillation(s_f: torch.Tensor, s_g: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """STML's self-distillation from head g to head f (``KL_STML``):

        L_KL = T^2 / N * sum_i KL( softmax(-D^g_i / T) || softmax(-D^f_i / T) )

    with D the row-normalised distances, g detached, the diagonal included. Zero when the two
    heads give the same distances."""
    log_q = F.log_softmax(-normalised_distances(s_f) / temperature, dim=1)
    p = F.softmax(-normalised_distances(s_g.detach()) / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="sum") * temperature**2 / len(s_f)


# --- nearest-neighbour batches ----------------------------------------------------------------
@torch.no_grad()
def nearest_neighbours(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """(N, k) long: each row's k nearest neighbours by Euclidean distance, the row itself first
    (forced, so duplicated images cannot push it out), on CPU."""
    k = min(k, len(x))
    out = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start : start + chunk], x)
        rows = torch.arange(len(d), device=d.device)
        d[rows, start + rows] = -1.0
        out.append(d.topk(k, dim=1, largest=False).indices.cpu())
    return torch.cat(out)


POOLINGS = ("avg", "avg_max")


def _set_pooling(backbone, pooling) -> None:
    """The code's networks sum global average and max pooling (``code/net/resnet.py``); None:
    that sum wherever the backbone has a global average pool, else the backbone's own features."""
    if pooling is not None and pooling not in POOLINGS:
        raise ConfigError(f"methods.stml.params.pooling is '{pooling}'; valid: {', '.join(POOLINGS)}")
    if not set_global_pooling(backbone, pooling or "avg_max") and pooling == "avg_max":
        raise ConfigError("methods.stml.params.pooling 'avg_max' needs a torchvision backbone (resnet18, resnet50, "
                          "googlenet); drop it for this backbone")


class NNBatchSampler(Sampler):
    """STML's ``NNBatchSampler``: each batch is ``batch_size // K`` seed images, drawn uniformly
    without replacement (independently for every batch), each followed by its K nearest
    neighbours (itself first), ``neighbours[seed]``; ``N // batch_size`` batches per epoch.
    An image can appear more than once in a batch (seeds with shared neighbours).

    Args:
        neighbours: (N, K) long, row i the K nearest neighbours of image i, i first.
        batch_size: images per batch, a multiple of K.
        generator: torch generator, so that epochs are reproducible.
    """

    def __init__(self, neighbours: torch.Tensor, *, batch_size: int, generator: torch.Generator):
        k = neighbours.shape[1]
        if batch_size % k:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {k} images per seed")
        self.neighbours, self.generator = neighbours.cpu(), generator
        self.seeds = min(batch_size // k, len(neighbours))
        self.num_batches = max(1, len(neighbours) // batch_size)

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        for _ in range(self.num_batches):
            seeds = torch.randperm(len(self.neighbours), generator=self.generator)[: self.seeds]
            yield self.neighbours[seeds].flatten().tolist()


# --- the method -------------------------------------------------------------------------------
def _orthogonal_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """The code's heads: orthogonal weight, zero bias."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@register_method("stml")
class STML(Method):
    """STML (Kim et al., CVPR 2022): unsupervised metric learning by self-taught contextualised
    similarities from an EMA teacher.

    Student ``backbone`` -> ``head`` (f, ``embedding_dim``, evaluated) and ``head_g`` (g,
    ``g_dim``); teacher ``teacher_backbone`` -> ``teacher_head_g``, frozen, always in eval mode:
    a copy of the backbone and its own orthogonally initialised g head (the code builds the
    teacher from the same pretrained weights with a fresh head). ``training_step``:

    1. student and teacher on the 2B crops [view 1; view 2] (one forward each, BN statistics
       over both views), index repeated for both views;
    2. W = ``contextual_similarity(t_g, index, sigma, k=topk, lam)``;
    3. loss = 1/2 [L_RC(s_f) + L_RC(s_g)] + kl_weight * L_KL(s_f, s_g);
    4. EMA: theta_t <- m theta_t + (1 - m) theta_s over the teacher's state dict (parameters and
       BN running statistics; ``num_batches_tracked`` copied), matched by name. It runs after
       the loss, before the optimizer step, so the teacher lags one step as in the code
       (``main.py``: backward, momentum update, ``opt.step()``).

    ``on_epoch_start`` embeds the training set (eval transform, index order) with the teacher's
    g (``nn_encoder="teacher"``) or the student's g in eval mode (``"student"``, the released
    code), unnormalised, and ``batch_sampler`` returns the epoch's ``NNBatchSampler``.

    Args (defaults: the README's CUB / Cars commands; SOP uses delta 0.9, nn_per_seed 2,
    momentum 0.9, head_lr_scale 100):
        embedding_dim: f, 512. g_dim: g, 1024. sigma: Gaussian kernel width, 3.
        delta: push margin of L_RC, 1. nn_per_seed: images per seed in a batch (the seed and its
        nearest neighbours), 5 (24 seeds x 5 for batch size 120). topk: k of the k-reciprocal
        neighbours; None: nn_per_seed x 2 views = 10, as the code couples them.
        lam: weight of W_C in W, 1/2. kl_weight: weight of L_KL, 1. kl_temperature: 1.
        momentum: EMA m, 0.999. student_norm: L2-normalise f and g for the losses and f for
        evaluation (the code's ``--student_norm``, off). head_lr_scale: learning rate of both
        heads relative to ``train.lr`` (``--emb-lr`` / ``--lr``), 1. nn_encoder: "teacher" or
        "student": which g head defines the nearest-neighbour batches. pooling: "avg_max" (the
        code's GAP + GMP sum) or "avg"; None: "avg_max" on torchvision backbones.
    """

    labels = "none"
    views = 2
    layers = ("backbone", "head")
    default_layer = "head"
    training_only = ("teacher_backbone.", "teacher_head_g.")
    NN_ENCODERS = ("teacher", "student")
    meta = {
        "paper": "Kim, Kim, Cho, Kwak, Self-Taught Metric Learning without Labels, CVPR 2022",
        "code": "tjddus9597/STML-CVPR22",
        "deviations": [
            "nearest-neighbour batches from the EMA teacher's g embedding (DESIGN.md; the code uses "
            "the student's g; nn_encoder='student' reproduces it); no k-means, as in the code",
            "on backbones without a global average pool (small_cnn, ResNet-12) the heads sit on "
            "the backbone's own features, not the code's GAP + GMP sum",
            "the teacher backbone starts as a copy of the student backbone (the code builds it "
            "from the same pretrained weights, so they agree except for from-scratch backbones, "
            "whose teacher the code initialises independently)",
            "the optimizer and schedule are the configured ones (the paper configs: AdamP with "
            "Nesterov, as the code)",
            "the neighbour pass uses the eval transform (resize and centre crop), the code "
            "resizes to 256 x 256 without cropping",
            "batch_size must be a multiple of nn_per_seed (the code silently drops the remainder)",
            "an image's own k-NN list always starts with itself (the code relies on distance 0)",
            "an empty k-reciprocal set gives a zero row of W_C instead of a division by zero",
        ],
    }

    def __init__(self, backbone, *, embedding_dim: int = 512, g_dim: int = 1024, sigma: float = 3.0,
                 delta: float = 1.0, nn_per_seed: int = 5, topk: int = None, lam: float = 0.5,
                 kl_weight: float = 1.0, kl_temperature: float = 1.0, momentum: float = 0.999,
                 student_norm: bool = False, head_lr_scale: float = 1.0, nn_encoder: str = "teacher",
                 pooling: str = None):
        if nn_encoder not in self.NN_ENCODERS:
            raise ConfigError(f"methods.stml.params.nn_encoder is '{nn_encoder}'; valid: {', '.join(self.NN_ENCODERS)}")
        _set_pooling(backbone, pooling)
        if nn_per_seed < 1:
            raise ConfigError(f"methods.stml.params.nn_per_seed is {nn_per_seed}; it must be at least 1")
        super().__init__(backbone)
        self.head = _orthogonal_linear(backbone.out_dim, embedding_dim)  # f
        self.head_g = _orthogonal_linear(backbone.out_dim, g_dim)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head_g = _orthogonal_linear(backbone.out_dim, g_dim)
        for p in (*self.teacher_backbone.parameters(), *self.teacher_head_g.parameters()):
            p.requires_grad_(False)
        self.sigma, self.delta, self.lam = sigma, delta, lam
        self.nn_per_seed = nn_per_seed
        self.topk = topk if topk is not None else nn_per_seed * self.views
        self.kl_weight, self.kl_temperature = kl_weight, kl_temperature
        self.momentum, self.student_norm = momentum, student_norm
        self.head_lr_scale, self.nn_encoder = head_lr_scale, nn_encoder
        self._neighbours = None  # (N, nn_per_seed), set by on_epoch_start
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher_backbone.eval()  # the code keeps the teacher in eval mode throughout
        self.teacher_head_g.eval()
        return self

    # --- networks -----------------------------------------------------------------------------
    def student(self, images):
        """(s_f, s_g): the student's two heads on ``images``."""
        features = self.backbone(images)
        return self.head(features), self.head_g(features)

    @torch.no_grad()
    def teacher(self, images):
        """t_g: the teacher's g embedding, no gradient."""
        return self.teacher_head_g(self.teacher_backbone(images))

    @torch.no_grad()
    def update_teacher(self) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s (backbone, and g head), by name."""
        momentum_update(self.teacher_backbone, self.backbone, self.momentum)
        momentum_update(self.teacher_head_g, self.head_g, self.momentum)

    # --- Method -------------------------------------------------------------------------------
    def loss_terms(self, s_f, s_g, t_g, index) -> dict:
        """{"rc": 1/2 [L_RC(s_f) + L_RC(s_g)], "kl": L_KL(s_f, s_g)} against the teacher's W."""
        if self.student_norm:
            s_f, s_g = F.normalize(s_f, dim=1), F.normalize(s_g, dim=1)
        w = contextual_similarity(t_g, index, sigma=self.sigma, k=min(self.topk, len(t_g)), lam=self.lam)
        rc = (relaxed_contrastive_loss(s_f, w, self.delta) + relaxed_contrastive_loss(s_g, w, self.delta)) / 2
        return {"rc": rc, "kl": distance_distillation(s_f, s_g, self.kl_temperature)}

    def training_step(self, batch):
        images = torch.cat([batch["images"], batch["view2"]])
        s_f, s_g = self.student(images)
        t_g = self.teacher(images)
        # Every term couples all 2B crops: under DDP they are those of the global batch, in the
        # single-process order [all first views; all second views].
        s_f, s_g, t_g = (self._global_views(x) for x in (s_f, s_g, t_g))
        index = global_batch(batch["index"])
        index = torch.cat([index, index])
        terms = self.loss_terms(s_f, s_g, t_g, index)
        loss = terms["rc"] + self.kl_weight * terms["kl"]
        self.update_teacher()
        return loss, {"rc_loss": terms["rc"].item(), "kl_loss": terms["kl"].item()}

    @staticmethod
    def _global_views(x):
        """[view 1; view 2] of this rank's slice -> [view 1; view 2] of the global batch."""
        first, second = x.chunk(2)
        return torch.cat([global_batch(first), global_batch(second)])

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, batches) -> None:
        """Nearest neighbours of every training image under the teacher's (or student's) g."""
        was_training = self.training
        self.eval()
        encode = self.teacher if self.nn_encoder == "teacher" else (lambda x: self.student(x)[1])
        embeddings, order = [], []
        for batch in batches(augment=False):  # under DDP this rank's part of the training set
            embeddings.append(encode(batch["images"]).float())
            order.append(batch["index"])
        self.train(was_training)
        embeddings, order = gather_uneven(torch.cat(embeddings)), gather_uneven(torch.cat(order))
        embeddings = embeddings[torch.argsort(order)]
        self._neighbours = broadcast_from_main(nearest_neighbours(embeddings, self.nn_per_seed))

    def batch_sampler(self, batch_size: int, generator):
        if self._neighbours is None:
            raise RuntimeError("STML builds its batches in on_epoch_start, which has not run this epoch")
        if batch_size % self.nn_per_seed:
            raise ConfigError(f"train.batch_size {batch_size} is not a multiple of methods.stml.params.nn_per_seed "
                              f"{self.nn_per_seed} (the code uses 120 = 24 seeds x 5)")
        return NNBatchSampler(self._neighbours, batch_size=batch_size, generator=generator)

    def param_groups(self) -> list:
        """The backbone at ``train.lr``, both student heads at ``head_lr_scale`` times it."""
        heads = [*self.head.parameters(), *self.head_g.parameters()]
        return [{"params": [p for p in self.backbone.parameters() if p.requires_grad]},
                {"params": heads, "lr_scale": self.head_lr_scale}]

    def embed(self, images, layer=None):
        layer = self.check_layer(layer)
        features = self.backbone(images)
        if layer == "backbone":
            return features
        f = self.head(features)
        return F.normalize(f, dim=1) if self.student_norm else f
