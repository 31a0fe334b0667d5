"""Deep-metric-learning losses in the RevDML setup (Roth et al., ICML 2020), built from
pytorch-metric-learning (pml) objects.

Every method here is an ``EmbeddingMethod``: a linear head to ``embedding_dim`` over the
backbone, L2-normalised, and a loss of (embeddings, labels). Where a pml default differs from
RevDML's code, RevDML is followed; each class says where, and lists it in ``meta``.

Learning rates of a loss's own parameters (margin's beta, the proxies) are RevDML's, written as
scales of RevDML's base learning rate 1e-5 (``--lr``): the optimizer gives them ``lr_scale`` x
``train.lr``, so they follow a changed ``train.lr`` and its schedule. RevDML adds them as
parameter groups without weight decay (Adam's default 0); so does ``param_groups``.
"""

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import (ContrastiveLoss, MarginLoss, MultiSimilarityLoss,
                                            NormalizedSoftmaxLoss, ProxyNCALoss, TripletMarginLoss)
from pytorch_metric_learning.miners import BaseMiner, MultiSimilarityMiner
from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from ..distributed import global_batch
from .base import Method, register_method

REVDML = "Roth et al., ICML 2020 (RevDML)"


class DistanceWeightedMiner(BaseMiner):
    """Distance-weighted negative sampling (Wu et al., ICCV 2017) as RevDML does it
    (``batchminer/distance.py``): **one** triplet per anchor, a random positive, a negative drawn
    with probability proportional to the inverse density of distances on the unit sphere,
    q(d)^-1 with log q(d) = (D-2) log d + (D-3)/2 log(1 - d^2/4), distances clamped below at
    ``cutoff``. pml's ``DistanceWeightedMiner`` draws one triplet per in-batch positive and
    drops negatives beyond 1.4; RevDML does neither.
    """

    def __init__(self, cutoff: float = 0.5, **kwargs):
        super().__init__(distance=LpDistance(normalize_embeddings=True, p=2, power=1), **kwargs)
        self.cutoff = cutoff

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        dim = embeddings.size(1)
        dist = self.distance(embeddings, ref_emb).clamp(min=self.cutoff)
        log_w = (2.0 - dim) * torch.log(dist) - ((dim - 3) / 2) * torch.log((1.0 - 0.25 * dist**2).clamp(min=1e-8))
        negative = labels.unsqueeze(1) != ref_labels.unsqueeze(0)
        log_w = log_w.masked_fill(~negative, -float("inf"))
        weights = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values.clamp(min=-1e30))
        return lmu.get_random_triplet_indices(labels, ref_labels=ref_labels, t_per_anchor=1, weights=weights)


class RevDMLProxyNCALoss(ProxyNCALoss):
    """pml's ProxyNCALoss with RevDML's (and the ProxyNCA paper's) denominator, which leaves the
    positive proxy out: per sample, d_y + log sum_{c != y} exp(-d_c), with d_c the squared
    distance between the L2-normalised embedding and proxy c, times ``softmax_scale``. pml's
    NCA softmax sums over all proxies, the positive one included."""

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        self.cast_types(embeddings.dtype, embeddings.device)
        d = self.softmax_scale * self.distance(embeddings, self.proxies)
        positive = F.one_hot(labels, len(self.proxies)).bool()
        losses = d.gather(1, labels.unsqueeze(1)).squeeze(1) + torch.logsumexp(-d.masked_fill(positive, float("inf")), dim=1)
        return {"loss": {"losses": losses, "indices": c_f.torch_arange_from_size(embeddings), "reduction_type": "element"}}


class EmbeddingMethod(Method):
    """A linear head to ``embedding_dim`` over the backbone, L2-normalised (RevDML's
    ``_normalize`` architectures); subclasses build ``self.loss`` (a pml loss) and define
    ``loss_fn(embeddings, labels)``. The loss's own parameters (beta, proxies) form their own
    optimizer group: learning rate ``loss_lr_scale`` x ``train.lr``, no weight decay."""

    loss_lr_scale = 1.0

    def __init__(self, backbone, *, embedding_dim: int = 128):
        super().__init__(backbone)
        self.head = nn.Linear(backbone.out_dim, embedding_dim)

    def forward(self, images):
        return F.normalize(self.head(self.backbone(images)), dim=1)

    def loss_fn(self, embeddings, labels):
        raise NotImplementedError

    def training_step(self, batch):
        # float32: pml casts a loss's parameters to the embeddings' dtype, which under autocast
        # would turn proxies into float16 for good. Under DDP the loss (its pairs, triplets and
        # miner draws) is the single-process loss of the global batch (see global_batch).
        embeddings, labels = global_batch(self(batch["images"]).float(), batch["labels"])
        return self.loss_fn(embeddings, labels), {}

    def embed(self, images, layer=None):
        return self.backbone(images) if self.check_layer(layer) == "backbone" else self(images)

    def param_groups(self):
        loss = getattr(self, "loss", None)
        own = [p for p in loss.parameters() if p.requires_grad] if loss is not None else []
        rest = [p for p in self.parameters() if p.requires_grad and all(p is not q for q in own)]
        groups = [{"params": rest}]
        if own:
            groups.append({"params": own, "lr_scale": self.loss_lr_scale, "weight_decay": 0.0})
        return groups


@register_method("triplet")
class Triplet(EmbeddingMethod):
    """Triplet loss with distance-weighted negative mining (Wu et al., ICCV 2017), RevDML's
    defaults: margin 0.2, miner lower cutoff 0.5, one triplet per anchor.

    Deviations from pml's defaults, to follow RevDML (``criteria/triplet.py``): the loss uses
    **squared** Euclidean distances and the plain mean over all mined triplets (pml: plain
    distances, mean over the non-zero ones); the miner is RevDML's (see DistanceWeightedMiner).
    """

    meta = {"paper": f"{REVDML}; Wu et al., ICCV 2017", "deviations": [
        "pml defaults overridden to follow RevDML: squared distances, mean over all mined triplets, "
        "RevDML's distance-weighted miner"]}

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, margin: float = 0.2,
                 miner_cutoff: float = 0.5):
        super().__init__(backbone, embedding_dim=embedding_dim)
        self.miner = DistanceWeightedMiner(cutoff=miner_cutoff)
        self.loss = TripletMarginLoss(margin=margin, distance=LpDistance(power=2), reducer=MeanReducer())

    def loss_fn(self, embeddings, labels):
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


@register_method("margin")
class Margin(EmbeddingMethod):
    """Margin loss (Wu et al., ICCV 2017) with distance-weighted mining, RevDML's
    ``criteria/margin.py``: per mined triplet (one per anchor),
    relu(d_ap - beta_y + m) + relu(beta_y - d_an + m), beta_y a learnable margin per class of the
    anchor; summed and divided by the number of triplets with a non-zero term.

    Args:
        margin: m = 0.2. beta: initial beta = 1.2 (RevDML's sample runs also use 0.6).
        beta_lr_scale: 50, i.e. RevDML's beta lr 5e-4 over its base lr 1e-5.
        miner_cutoff: lower distance cutoff of the miner, 0.5.

    pml's MarginLoss divides by the number of non-zero *terms* (a triplet with both terms active
    counts twice); RevDML's ``sum((pos > 0) + (neg > 0))`` adds bool tensors, a logical or, so
    it counts triplets. pml's ``AvgNonZeroReducer`` over the per-triplet sums gives RevDML's
    value. Distances: pml's Euclidean ``cdist`` instead of RevDML's sqrt(|a-b|^2 + 1e-8) (a
    difference below 1e-7 for the distances that matter; both have zero gradient at 0). The
    beta regulariser nu is 0 and not exposed (RevDML's nu > 0 path raises a NameError).
    """

    meta = {"paper": f"{REVDML}; Wu et al., ICCV 2017", "deviations": [
        "pml defaults overridden to follow RevDML: divisor = triplets with a non-zero term "
        "(AvgNonZeroReducer, not pml's count of non-zero terms), RevDML's distance-weighted miner",
        "Euclidean distance without RevDML's +1e-8 under the square root (pml's cdist; < 1e-7 apart)",
        "nu (beta regulariser) fixed at 0, RevDML's default; its nu > 0 code path raises a NameError"]}
    loss_lr_scale = 50.0

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, margin: float = 0.2,
                 beta: float = 1.2, beta_lr_scale: float = 50.0, miner_cutoff: float = 0.5):
        super().__init__(backbone, embedding_dim=embedding_dim)
        self.miner = DistanceWeightedMiner(cutoff=miner_cutoff)
        # reducer: RevDML's divisor (triplets with a non-zero term), not pml's DivisorReducer
        self.loss = MarginLoss(margin=margin, nu=0, beta=beta, learn_beta=True, num_classes=num_classes,
                               reducer=AvgNonZeroReducer())
        self.loss_lr_scale = beta_lr_scale

    def loss_fn(self, embeddings, labels):
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


@register_method("multisimilarity")
class MultiSimilarity(EmbeddingMethod):
    """Multi-Similarity loss (Wang et al., CVPR 2019), RevDML's ``criteria/multisimilarity.py``:
    pairs mined by the +-``epsilon`` rule against the hardest opposite pair, then per anchor
    1/alpha log(1 + sum_pos exp(-alpha (s - base))) + 1/beta log(1 + sum_neg exp(beta (s - base)))
    on cosine similarities, averaged over the anchors that kept pairs.

    Args:
        alpha: 2 (positive weight). beta: 40 (negative weight; pml's default is 50).
        base: 0.5 (RevDML's ``thresh``). epsilon: 0.1 (RevDML's ``margin``).

    RevDML skips anchors with no mined pair and averages over the rest; pml's default
    ``MeanReducer`` would average zeros in. An anchor keeps a positive iff it keeps a negative,
    and its loss is then > 0, so ``AvgNonZeroReducer`` gives RevDML's mean.
    """

    meta = {"paper": f"{REVDML}; Wang et al., CVPR 2019", "deviations": [
        "pml defaults overridden to follow RevDML: beta 40 (pml 50), mean over anchors with mined "
        "pairs (AvgNonZeroReducer; pml's MeanReducer counts every anchor)"]}

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, alpha: float = 2.0,
                 beta: float = 40.0, base: float = 0.5, epsilon: float = 0.1):
        super().__init__(backbone, embedding_dim=embedding_dim)
        self.miner = MultiSimilarityMiner(epsilon=epsilon)
        self.loss = MultiSimilarityLoss(alpha=alpha, beta=beta, base=base, reducer=AvgNonZeroReducer())

    def loss_fn(self, embeddings, labels):
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


@register_method("contrastive")
class Contrastive(EmbeddingMethod):
    """Contrastive loss (Hadsell et al., CVPR 2006) on distance-weighted triplets, RevDML's
    ``criteria/contrastive.py`` with ``--batch_mining distance`` (its sample runs): each mined
    triplet (a, p, n) gives the positive pair (a, p) and the negative pair (a, n);
    loss = mean_pos relu(d - pos_margin) + mean_neg relu(neg_margin - d), d the plain (not
    squared) Euclidean distance.

    Args:
        pos_margin: 0. neg_margin: 1. miner_cutoff: lower distance cutoff of the miner, 0.5.

    pml's default ``AvgNonZeroReducer`` averages the non-zero pair losses only; RevDML's mean
    counts every pair, hence ``MeanReducer`` (applied to the positive and negative sub-losses
    separately, then summed).
    """

    meta = {"paper": f"{REVDML}; Hadsell et al., CVPR 2006", "deviations": [
        "pml defaults overridden to follow RevDML: MeanReducer (pml: AvgNonZeroReducer), pairs from "
        "RevDML's distance-weighted triplets (pml: all pairs)",
        "pml's cdist instead of nn.PairwiseDistance, which adds 1e-6 to the difference vector"]}

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, pos_margin: float = 0.0,
                 neg_margin: float = 1.0, miner_cutoff: float = 0.5):
        super().__init__(backbone, embedding_dim=embedding_dim)
        self.miner = DistanceWeightedMiner(cutoff=miner_cutoff)
        self.loss = ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, distance=LpDistance(p=2, power=1),
                                    reducer=MeanReducer())

    def loss_fn(self, embeddings, labels):
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


@register_method("proxynca")
class ProxyNCA(EmbeddingMethod):
    """ProxyNCA (Movshovitz-Attias et al., ICCV 2017), RevDML's ``criteria/proxynca.py``: one
    proxy per class; embeddings and proxies L2-normalised and scaled by ``scale`` = 3 (a
    temperature), loss = mean_i [d(x_i, p_y) + log sum_{c != y} exp(-d(x_i, p_c))] with d the
    squared Euclidean distance. |3x - 3p|^2 = 9 |x - p|^2, so pml's ``softmax_scale`` is
    scale^2 on its normalised squared distances.

    Args:
        scale: 3. proxy_lr_scale: 50 (RevDML's ``--loss_proxynca_lrmulti``).

    Follows RevDML where pml differs: the positive proxy is left out of the denominator (see
    RevDMLProxyNCALoss), and the proxies start as N(0, 1/8^2) (RevDML's randn/8; pml: N(0, 1)).
    """

    meta = {"paper": f"{REVDML}; Movshovitz-Attias et al., ICCV 2017", "deviations": [
        "pml's ProxyNCALoss changed to follow RevDML: positive proxy left out of the denominator, "
        "proxies initialised N(0, 1/64) (pml N(0, 1)), x3 scaling as softmax_scale 9"]}

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, scale: float = 3.0,
                 proxy_lr_scale: float = 50.0):
        super().__init__(backbone, embedding_dim=embedding_dim)
        self.loss = RevDMLProxyNCALoss(num_classes=num_classes, embedding_size=embedding_dim, softmax_scale=scale**2,
                                       weight_init_func=c_f.TorchInitWrapper(nn.init.normal_, std=1 / 8))
        self.loss_lr_scale = proxy_lr_scale

    def loss_fn(self, embeddings, labels):
        return self.loss(embeddings, labels)


@register_method("normsoftmax")
class NormSoftmax(EmbeddingMethod):
    """Normalised softmax (Zhai & Wu, BMVC 2019), RevDML's ``criteria/softmax.py``:
    cross-entropy over cos(x, w_c) / temperature, with L2-normalised class weights w_c.

    Args:
        temperature: 0.05. proxy_lr_scale: 1, i.e. RevDML's ``--loss_softmax_lr`` 1e-5 over its
            base lr 1e-5.

    Follows RevDML where pml differs: the class weights start as U(-1/sqrt(dim), 1/sqrt(dim))
    (pml: N(0, 1); only the start of the directions' training differs).
    """

    meta = {"paper": f"{REVDML}; Zhai & Wu, BMVC 2019", "deviations": [
        "pml default overridden to follow RevDML: class weights initialised U(-1/sqrt(dim), 1/sqrt(dim)) "
        "(pml N(0, 1))"]}

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, temperature: float = 0.05,
                 proxy_lr_scale: float = 1.0):
        super().__init__(backbone, embedding_dim=embedding_dim)
        bound = embedding_dim**-0.5
        self.loss = NormalizedSoftmaxLoss(num_classes=num_classes, embedding_size=embedding_dim, temperature=temperature,
                                          weight_init_func=c_f.TorchInitWrapper(nn.init.uniform_, a=-bound, b=bound))
        self.loss_lr_scale = proxy_lr_scale

    def loss_fn(self, embeddings, labels):
        return self.loss(embeddings, labels)
