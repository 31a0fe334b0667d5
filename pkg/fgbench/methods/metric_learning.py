"""Deep-metric-learning losses in the RevDML setup (Roth et al., ICML 2020), built from
pytorch-metric-learning objects."""

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.reducers import MeanReducer
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from .base import Method, register_method


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


class EmbeddingMethod(Method):
    """A linear head to ``embedding_dim`` over the backbone, L2-normalised (RevDML's
    ``_normalize`` architectures); subclasses define ``loss_fn(embeddings, labels)``."""

    def __init__(self, backbone, *, embedding_dim: int = 128):
        super().__init__(backbone)
        self.head = nn.Linear(backbone.out_dim, embedding_dim)

    def forward(self, images):
        return F.normalize(self.head(self.backbone(images)), dim=1)

    def training_step(self, batch):
        return self.loss_fn(self(batch["images"]), batch["labels"]), {}

    def embed(self, images, layer=None):
        return self.backbone(images) if self.check_layer(layer) == "backbone" else self(images)


@register_method("triplet")
class Triplet(EmbeddingMethod):
    """Triplet loss with distance-weighted negative mining (Wu et al., ICCV 2017), RevDML's
    defaults: margin 0.2, miner lower cutoff 0.5, one triplet per anchor.

    Deviations from pml's defaults, to follow RevDML (``criteria/triplet.py``): the loss uses
    **squared** Euclidean distances and the plain mean over all mined triplets (pml: plain
    distances, mean over the non-zero ones); the miner is RevDML's (see DistanceWeightedMiner).
    """

    meta = {"paper": "Roth et al., ICML 2020 (RevDML); Wu et al., ICCV 2017", "deviations": []}

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, margin: float = 0.2,
                 miner_cutoff: float = 0.5):
        super().__init__(backbone, embedding_dim=embedding_dim)
        self.miner = DistanceWeightedMiner(cutoff=miner_cutoff)
        self.loss = TripletMarginLoss(margin=margin, distance=LpDistance(power=2), reducer=MeanReducer())

    def loss_fn(self, embeddings, labels):
        return self.loss(embeddings, labels, self.miner(embeddings, labels))
