"""The plug-in keeps fgbench's method contract, and its loss is CosFace's formula."""

import torch
import torch.nn.functional as F

from fgbench.testing import check_method, fixed_batch
from fgbench_cosface import CosFace


def test_contract():
    check_method(CosFace, {"margin": 0.2, "scale": 16.0})


def test_loss_is_the_large_margin_cosine_softmax():
    from fgbench.models.backbones import SmallCNN

    torch.manual_seed(0)
    method, batch = CosFace(SmallCNN(), num_classes=4, margin=0.2, scale=16.0), fixed_batch()
    loss, _ = method.training_step(batch)
    cos = F.normalize(method.embed(batch["images"], "head")) @ F.normalize(method.loss.W, dim=0)
    logits = 16.0 * (cos - 0.2 * F.one_hot(batch["labels"], 4))
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["labels"]))
