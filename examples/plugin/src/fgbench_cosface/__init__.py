"""CosFace (Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR
2018) as an fgbench method: a linear head over the backbone, trained with a softmax over
s * (cos(theta_j) - m [j = y]), theta_j the angle between the embedding and class weight j.

The loss is pytorch-metric-learning's ``CosFaceLoss``; fgbench finds the class through the entry
point in pyproject.toml and registers it as ``cosface``.
"""

from pytorch_metric_learning.losses import CosFaceLoss
from torch import nn

from fgbench.methods import Method


class CosFace(Method):
    labels = "supervised"  # trains on whichever label the setting provides (fine or coarse)
    layers = ("backbone", "head")
    default_layer = "head"
    meta = {"paper": "Wang et al., CosFace, CVPR 2018", "code": "pytorch-metric-learning CosFaceLoss"}

    # fgbench passes num_classes (labels != "none"); the rest are methods.cosface.params, whose
    # annotations config validation checks (margin: big stops before any job).
    def __init__(self, backbone, *, num_classes: int, embedding_dim: int = 128, margin: float = 0.35,
                 scale: float = 64.0):
        super().__init__(backbone)
        self.head = nn.Linear(backbone.out_dim, embedding_dim)
        self.loss = CosFaceLoss(num_classes, embedding_dim, margin=margin, scale=scale)

    def training_step(self, batch):
        # float32 under autocast: pml would cast its class weights to the embeddings' dtype
        embeddings = self.head(self.backbone(batch["images"])).float()
        return self.loss(embeddings, batch["labels"]), {}

    def embed(self, images, layer):
        features = self.backbone(images)
        return features if self.check_layer(layer) == "backbone" else self.head(features)
