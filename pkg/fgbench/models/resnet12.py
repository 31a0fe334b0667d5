"""The few-shot ResNet-12 (64-160-320-640, DropBlock) of the coarse-to-fine codebases.

ANCOR (Bukchin et al., CVPR 2021, ``models/resnet_few_shot.py``) and SCGM (Ni et al., ICLR 2022,
``scgm_a/resnets.py``) both copy the ResNet-12 of RFS (Tian et al., "Rethinking Few-Shot Image
Classification", ECCV 2020, ``models/resnet.py``), itself the MetaOptNet network (Lee et al.,
CVPR 2019). DropBlock is Ghiasi et al., "DropBlock: A regularization method for convolutional
networks", NeurIPS 2018.
"""

import torch
import torch.nn.functional as F
from torch import nn

# RFS: keep_rate = max(1 - drop_rate / (20 * 2000) * num_batches_tracked, 1 - drop_rate), i.e. the
# drop probability of a DropBlock layer ramps linearly from 0 to drop_rate over 40,000 batches.
DROPBLOCK_RAMP_BATCHES = 20 * 2000


class DropBlock(nn.Module):
    """DropBlock with the RFS semantics; the identity in eval mode or when ``drop_prob`` is 0.

    Block seeds are Bernoulli(gamma) on the (H - b + 1) x (W - b + 1) grid of positions where a
    b x b block fits entirely inside the map; each seed zeroes the block whose top-left corner it
    is (per sample and per channel). gamma = drop_prob / b^2 * H W / ((H - b + 1)(W - b + 1)).
    The result is rescaled by (number of elements) / (number kept), counted over the whole batch
    tensor, so the mean activation is preserved in expectation.

    Written here instead of using ``torchvision.ops.drop_block2d``, which samples seeds the same
    way for odd b but rejects even block sizes (ANCOR/SCGM's CIFAR network ``resnet12forcifar``
    uses b = 2) and silently shrinks b to the map size, where RFS fails; here a map smaller than
    the block is an error (RFS divides by zero).

    Deviations from RFS: (1) the block mask is built with a max-pool, so every seed drops its
    whole b x b block. RFS's ``_compute_block_mask`` pairs seeds with block offsets through
    ``seeds.repeat(b*b, 1)`` + ``offsets.repeat(n_seeds, 1)``, so seed i only gets the offsets
    j = i (mod g), g = gcd(n_seeds, b*b): whenever the number of seeds in the batch shares a
    factor with b*b (about 1 batch in 5 for b = 5, 1 in 2 for b = 2) its "blocks" are partial
    (b cells or 1 cell for b = 5; 2 or 1 for b = 2) and fewer units are dropped than intended.
    This is a bug against the DropBlock paper, not reproduced. (2) For non-square maps gamma
    uses H W / ((H-b+1)(W-b+1)) (RFS uses the height twice). (3) If every element is dropped
    the output is zero, not NaN.
    """

    def __init__(self, *, block_size: int):
        super().__init__()
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size

    def forward(self, x: torch.Tensor, drop_prob: float) -> torch.Tensor:
        if not self.training or drop_prob <= 0.0:
            return x
        if drop_prob > 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        n, c, h, w = x.shape
        b = self.block_size
        if h < b or w < b:
            raise ValueError(
                f"DropBlock block size {b} does not fit a {h}x{w} feature map; for 32x32 inputs use "
                "dropblock_size=2 (ANCOR/SCGM `resnet12forcifar`, RFS for CIFAR-FS/FC100)")
        gamma = min(1.0, drop_prob / b**2 * (h * w) / ((h - b + 1) * (w - b + 1)))
        seeds = torch.empty((n, c, h - b + 1, w - b + 1), device=x.device).bernoulli_(gamma)
        # Output (i, j) is dropped iff a seed lies in rows i-b+1..i and columns j-b+1..j.
        dropped = F.max_pool2d(F.pad(seeds, [b - 1] * 4), kernel_size=b, stride=1)
        keep = 1.0 - dropped
        scale = keep.numel() / keep.sum().clamp_min(1.0)
        return x * (keep * scale).to(x.dtype)


class ResNet12Block(nn.Module):
    """One RFS ``BasicBlock`` (stride 2): 3 x (conv3x3-BN-LeakyReLU(0.1)), the last activation after
    adding the 1x1-conv+BN shortcut, then max-pool 2, then regularisation: DropBlock with the
    ramped drop probability if ``drop_block``, else plain dropout with ``drop_rate`` (as in RFS,
    whose first two stages use ``F.dropout``).

    ``num_batches_tracked`` counts training-mode forwards and drives the DropBlock ramp. It is a
    buffer so that checkpoints resume the schedule (RFS keeps a Python int, also counting eval
    forwards; loading an RFS/ANCOR state dict therefore needs ``strict=False``).
    """

    def __init__(self, *, in_channels: int, channels: int, drop_rate: float = 0.0,
                 drop_block: bool = False, block_size: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.relu = nn.LeakyReLU(0.1)
        self.maxpool = nn.MaxPool2d(2)
        self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.drop_rate = drop_rate
        self.dropblock = DropBlock(block_size=block_size) if drop_block else None
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def dropblock_prob(self) -> float:
        """The current DropBlock drop probability: min(drop_rate * batches / 40000, drop_rate)."""
        return min(self.drop_rate * int(self.num_batches_tracked) / DROPBLOCK_RAMP_BATCHES, self.drop_rate)

    def forward(self, x):
        if self.training:
            self.num_batches_tracked += 1
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.maxpool(self.relu(out + self.downsample(x)))
        if self.drop_rate > 0:
            if self.dropblock is not None:
                out = self.dropblock(out, self.dropblock_prob())
            else:
                out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class ResNet12(nn.Module):
    """The RFS-style ResNet-12 used by ANCOR and SCGM for CIFAR-100 and tieredImageNet.

    Papers: Bukchin et al., "Fine-grained Angular Contrastive Learning with Coarse Labels"
    (ANCOR), CVPR 2021; Ni et al., "Superclass-Conditional Gaussian Mixture Model for Learning
    Fine-Grained Embeddings" (SCGM), ICLR 2022; network from Tian et al., "Rethinking Few-Shot
    Image Classification: a Good Embedding Is All You Need?" (RFS), ECCV 2020, after Lee et al.,
    "Meta-Learning with Differentiable Convex Optimization" (MetaOptNet), CVPR 2019; DropBlock
    from Ghiasi et al., NeurIPS 2018.

    No stem: four stages ``layer1..layer4`` (one ``ResNet12Block`` each, widths ``channels``),
    each halving the resolution (84 -> 42 -> 21 -> 10 -> 5; 32 -> 16 -> 8 -> 4 -> 2), then global
    average pooling to a ``channels[-1]`` (640)-d feature. Regularisation as in RFS with
    ``drop_rate``: dropout p=drop_rate after stages 1-2, DropBlock (block ``dropblock_size``,
    drop probability ramped linearly from 0 to drop_rate over 40,000 training batches) after
    stages 3-4. The codebases use ``dropblock_size=5`` for tieredImageNet (``resnet12``) and 2
    for CIFAR (``resnet12forcifar``); 5 does not fit CIFAR's 4x4 / 2x2 maps and raises in
    training mode (RFS crashes there too). Init: Kaiming-normal (fan_out, leaky_relu) convs, BN
    weight 1 / bias 0. State-dict names follow RFS (``layer1.0.conv1.weight``, ...) and there is no
    classifier (RFS/ANCOR's ``fc`` is the method head).

    Deviations: the DropBlock ramp counter is a state-dict buffer that counts training-mode
    forwards only (RFS: a plain int that also counts eval forwards); DropBlock always drops full
    b x b blocks, where RFS's mask code drops partial ones in some batches (see ``DropBlock``).
    ``avg_pool=False`` returns the flattened last map (640 x h x w, input-size dependent),
    so ``out_dim`` is then None.
    """

    def __init__(self, *, in_channels: int = 3, channels=(64, 160, 320, 640), drop_rate: float = 0.1,
                 dropblock_size: int = 5, avg_pool: bool = True):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4:
            raise ValueError(f"ResNet-12 has 4 stages; got channels={channels}")
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f"drop_rate must be in [0, 1], got {drop_rate}")
        c_in = in_channels
        for i, c in enumerate(channels):
            block = ResNet12Block(in_channels=c_in, channels=c, drop_rate=drop_rate,
                                  drop_block=i >= 2, block_size=dropblock_size if i >= 2 else 1)
            self.add_module(f"layer{i + 1}", nn.Sequential(block))
            c_in = c
        self.avgpool = nn.AdaptiveAvgPool2d(1) if avg_pool else None
        self.out_dim = channels[-1] if avg_pool else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def stages(self, x):
        """The feature maps after each of the four stages."""
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def forward(self, x):
        x = self.stages(x)[-1]
        if self.avgpool is not None:
            x = self.avgpool(x)
        return torch.flatten(x, 1)
