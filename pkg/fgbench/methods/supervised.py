"""Supervised cross-entropy on coarse labels: the coarse-to-fine baseline (as in ANCOR's and
SCGM's tables, "supervised coarse")."""

import torch.nn.functional as F
from torch import nn

from .base import Method, register_method


@register_method("supervised_coarse")
class SupervisedCoarse(Method):
    """A linear classifier over the backbone, trained with cross-entropy on coarse labels.

    Few-shot features come from the backbone by default: the coarse logits have as many
    dimensions as coarse classes, too few to separate the fine ones.
    """

    labels = "coarse"
    layers = ("backbone", "logits")
    default_layer = "backbone"
    meta = {"paper": "baseline of Bukchin et al., CVPR 2021 and Ni et al., ICLR 2022", "deviations": []}

    def __init__(self, backbone, *, num_classes: int):
        super().__init__(backbone)
        self.classifier = nn.Linear(backbone.out_dim, num_classes)

    def training_step(self, batch):
        logits = self.classifier(self.backbone(batch["images"]))
        loss = F.cross_entropy(logits, batch["labels"])
        accuracy = (logits.argmax(1) == batch["labels"]).float().mean()
        return loss, {"train_accuracy": accuracy.item()}

    def embed(self, images, layer=None):
        features = self.backbone(images)
        return self.classifier(features) if self.check_layer(layer) == "logits" else features
