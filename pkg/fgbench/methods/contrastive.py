"""Momentum contrast: MoCo-v2 (self-supervised) and ANCOR (MoCo with angular per-class contrast
plus a coarse classifier), on two augmented views per image.

Both keep a key encoder, a frozen copy of the backbone and projector updated by momentum, and a
queue of past keys; all of it is registered (submodules and buffers), so ``state_dict()`` holds
the whole training state. Per step (as in MoCo's and ANCOR's code): query forward on view 1,
momentum update of the key encoder, key forward on view 2 under ``no_grad`` with shuffle-BN, the
loss against the queue as it was, then the keys enter the queue.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..distributed import splits_batch
from ..models.momentum import (ClassQueues, Queue, angular_normalise, batch_shuffle, batch_unshuffle,
                               concat_all_gather, momentum_update)
from .base import Method, register_method

SHARED_DEVIATIONS = [
    "momentum update over the whole state dict (parameters and BatchNorm running statistics, as "
    "ANCOR's k2q mapping; MoCo's code averages parameters only); the key encoder never runs in eval "
    "mode, so its running statistics do not affect training",
    "in one process shuffle-BN and the key all-gather are identities and BatchNorm statistics are over "
    "the whole batch, not 64 images per GPU; under DDP (fgbench train --gpus N) BatchNorm is per rank "
    "with MoCo's shuffle-BN and the keys of all ranks enter the queue, as in MoCo's code",
    "queues start as random unit vectors (as the code does) and wrap for any batch size (the code "
    "assumes the queue size is a multiple of the batch size)",
]


def projection(in_dim: int, dim: int, mlp: bool) -> nn.Module:
    """MoCo-v2's projector: Linear(d, d) -> ReLU -> Linear(d, dim) with ``mlp``, else Linear(d, dim).
    In ANCOR the last Linear is ``fc1`` of the ``seq`` head."""
    if not mlp:
        return nn.Linear(in_dim, dim)
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, dim))


def _frozen_copy(module: nn.Module) -> nn.Module:
    key = copy.deepcopy(module)
    for p in key.parameters():
        p.requires_grad_(False)
    return key


class MomentumEncoder(Method):
    """Query encoder ``backbone -> projector`` and a key encoder ``key_backbone -> key_projector``
    (copies, no gradient), moved towards the query encoder by ``update_key_encoder``."""

    views = 2
    shuffle_bn = True  # per-rank BatchNorm; the keys go through MoCo's shuffle-BN (``keys``)
    training_only = ("key_backbone.", "key_projector.", "queue.", "queues.")

    def __init__(self, backbone, projector: nn.Module, *, momentum: float):
        super().__init__(backbone)
        self.projector = projector
        self.key_backbone, self.key_projector = _frozen_copy(backbone), _frozen_copy(projector)
        self.momentum = momentum

    @torch.no_grad()
    def update_key_encoder(self) -> None:
        momentum_update(self.key_backbone, self.backbone, self.momentum)
        momentum_update(self.key_projector, self.projector, self.momentum)

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """Raw key embeddings (B, dim) of ``images``: key encoder, no gradient, shuffle-BN (across
        ranks; in one process across BatchNorm groups, else an identity). Runs in the method's mode
        (train mode while training)."""
        shuffled, idx_unshuffle = batch_shuffle(images, grouped=splits_batch(self.key_backbone, len(images)))
        return batch_unshuffle(self.key_projector(self.key_backbone(shuffled)), idx_unshuffle)


@register_method("moco")
class MoCo(MomentumEncoder):
    """MoCo-v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297): InfoNCE between the
    L2-normalised query q of view 1 and key k of view 2, with a queue of past keys as negatives:
    logits = [q.k, q.queue] / T, cross-entropy towards index 0. No labels.

    Args:
        embedding_dim: embedding size (128). mlp: the 2-layer projector of MoCo-v2 (True).
        queue_size: K = 65536 keys. momentum: m = 0.999. temperature: T = 0.2.
    """

    labels = "none"
    layers = ("backbone", "head")
    default_layer = "backbone"
    meta = {"paper": "He et al., CVPR 2020; Chen et al., arXiv 2003.04297 (MoCo-v2)",
            "code": "facebookresearch/moco",
            "deviations": SHARED_DEVIATIONS}

    def __init__(self, backbone, *, embedding_dim: int = 128, mlp: bool = True, queue_size: int = 65536,
                 momentum: float = 0.999, temperature: float = 0.2):
        super().__init__(backbone, projection(backbone.out_dim, embedding_dim, mlp), momentum=momentum)
        self.temperature = temperature
        self.queue = Queue(queue_size, embedding_dim)

    def training_step(self, batch):
        q = F.normalize(self.projector(self.backbone(batch["images"])), dim=1)
        self.update_key_encoder()
        k = F.normalize(self.keys(batch["view2"]), dim=1)
        negatives = self.queue.queue.clone()  # the enqueue below must not touch what backward reads
        logits = torch.cat([torch.einsum("nd,nd->n", q, k).unsqueeze(1), q @ negatives.to(q.dtype).T], 1)
        logits = logits / self.temperature
        loss = F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long))
        self.queue.enqueue(concat_all_gather(k))
        return loss, {"contrast_accuracy": (logits.argmax(1) == 0).float().mean().item()}

    def embed(self, images, layer=None):
        features = self.backbone(images)
        return features if self.check_layer(layer) == "backbone" else self.projector(features)


@register_method("ancor")
class ANCOR(MomentumEncoder):
    """ANCOR (Bukchin et al., CVPR 2021): MoCo with a coarse classifier and angular
    normalisation, negatives only from the query's own coarse class.

    Query: features -> ``projector`` (MLP + ``fc1``) -> e (dim); coarse logits = ``fc2``(ReLU(e))
    (the ``seq`` head; ``classifier`` is fc2). Keys: a momentum copy of backbone and projector.
    Loss L = CE(logits, y) + CE(contrast logits, 0), where with A_y(v) = N(N(v) - N(w_y)), w_y the
    detached class weight of y,

        contrast logits = [A_y(e_q).A_y(e_k), A_y(e_q).A_y(u_1), ..., A_y(e_q).A_y(u_K)] / T

    and u_j the raw keys in class y's queue. ``metric="norm"``: N(.) instead of A_y(.), still with
    per-class negatives.

    Hooks for subclasses (SCGM-A):
        query(images) -> (e, logits); classify(e) -> logits; keys(images) -> k;
        class_weights() -> (C, dim); contrast_logits(e_q, k, labels) -> (B, 1 + K);
        contrast_loss(e_q, k, labels) -> scalar; loss_terms(batch, e, logits, k) -> {name: scalar},
        summed with ``term_weights`` (name -> weight, 1 when absent); enqueue(k, labels).

    Args:
        num_classes: coarse classes C. embedding_dim: embedding size (128). mlp: the MLP before fc1 (True).
        queue_size: K = 65536 keys per class. momentum: m = 0.999. temperature: T = 0.2.
        metric: "angular" (ANCOR) or "norm".
    """

    labels = "coarse"
    layers = ("backbone", "head", "logits")
    default_layer = "backbone"  # ANCOR evaluates pooled backbone features (eval.py --only-base)
    meta = {"paper": "Bukchin et al., CVPR 2021 (ANCOR)", "code": "guybuk/ANCOR",
            "deviations": SHARED_DEVIATIONS + [
                "only the head 'seq' and the per-class queue ('multi'); queues are stored "
                "(C, K, dim) instead of (C, dim, K), and the per-class negatives are computed class "
                "by class instead of through a one-hot einsum over all classes (same values)"]}
    METRICS = ("angular", "norm")

    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, mlp: bool = True,
                 queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.2,
                 metric: str = "angular"):
        if metric not in self.METRICS:
            raise ConfigError(f"methods.ancor.params.metric is '{metric}'; valid metrics: {', '.join(self.METRICS)}")
        super().__init__(backbone, projection(backbone.out_dim, embedding_dim, mlp), momentum=momentum)
        self.classifier = nn.Linear(embedding_dim, num_classes)  # ANCOR's fc2
        self.queues = ClassQueues(num_classes, queue_size, embedding_dim)
        self.temperature, self.metric = temperature, metric
        self.term_weights = {}  # loss-term name -> weight (1 when absent); SCGM-A weighs its own

    # --- hooks --------------------------------------------------------------------------------
    def query(self, images):
        """(e, logits): the query embedding (B, dim) and the coarse logits (B, C)."""
        e = self.projector(self.backbone(images))
        return e, self.classify(e)

    def classify(self, e):
        """Coarse logits from the embedding: fc2(ReLU(e))."""
        return self.classifier(F.relu(e))

    def class_weights(self):
        """(C, dim) class vectors that centre the angular normalisation: fc2's weight rows.
        ``contrast_logits`` detaches them."""
        return self.classifier.weight

    def _normalise(self, v, w):
        return angular_normalise(v, w) if self.metric == "angular" else F.normalize(v, dim=-1)

    def contrast_logits(self, e_q, k, labels):
        """(B, 1 + K) logits / T: column 0 the positive (the key of the same image), then the K
        entries of the query's own class queue, all normalised around that class's weight."""
        w = self.class_weights().detach()
        q = self._normalise(e_q, w[labels])
        positive = torch.einsum("nd,nd->n", q, self._normalise(k.to(q.dtype), w[labels])).unsqueeze(1)
        rows, negatives = [], []
        for c in torch.unique(labels).tolist():  # only the classes present: memory K * dim per class
            idx = (labels == c).nonzero().squeeze(1)
            queue = self._normalise(self.queues.queue[c], w[c])  # a new tensor: enqueue cannot touch it
            rows.append(idx)
            negatives.append(q[idx] @ queue.to(q.dtype).T)
        negatives = torch.cat(negatives)[torch.argsort(torch.cat(rows))]
        return torch.cat([positive.to(negatives.dtype), negatives], 1) / self.temperature

    def contrast_loss(self, e_q, k, labels):
        """CE of ``contrast_logits`` towards the positive (index 0)."""
        logits = self.contrast_logits(e_q, k, labels)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    def loss_terms(self, batch, e, logits, k) -> dict:
        """Named loss terms, summed by ``training_step`` (SCGM-A adds its own)."""
        labels = batch["labels"]
        return {"cls": F.cross_entropy(logits, labels), "contrast": self.contrast_loss(e, k, labels)}

    @torch.no_grad()
    def enqueue(self, k, labels):
        """Raw keys of every rank into their classes' queues."""
        self.queues.enqueue(concat_all_gather(k), concat_all_gather(labels))

    # --- Method -------------------------------------------------------------------------------
    def training_step(self, batch):
        labels = batch["labels"]
        e, logits = self.query(batch["images"])
        self.update_key_encoder()
        k = self.keys(batch["view2"])
        terms = self.loss_terms(batch, e, logits, k)
        self.enqueue(k, labels)
        loss = sum(self.term_weights.get(name, 1.0) * term for name, term in terms.items())
        logs = {f"{name}_loss": term.item() for name, term in terms.items()}
        logs["train_accuracy"] = (logits.argmax(1) == labels).float().mean().item()
        return loss, logs

    def embed(self, images, layer=None):
        layer = self.check_layer(layer)
        features = self.backbone(images)
        if layer == "backbone":
            return features
        e = self.projector(features)
        return e if layer == "head" else self.classify(e)
