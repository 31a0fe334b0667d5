"""Backbones: a small CNN for 28x28 grey images, ResNet-12 for few-shot benchmarks, and
torchvision ResNets for larger images.

Each builder returns an ``nn.Module`` mapping images (B, C, H, W) to features (B, out_dim);
methods put their heads on top.
"""

import torch
import torchvision
from torch import nn

from ..errors import ConfigError
from .resnet12 import ResNet12


class SmallCNN(nn.Module):
    """The vMF paper's MNIST network (Scott et al., ICCV 2021, ``NDigitMNISTArch``) without its
    last two linear layers, which become method heads: conv(6)-pool-conv(16)-pool-fc(120).

    ``width`` multiplies every channel count (1 is the paper's network). Xavier-uniform weights
    and zero biases, as in the paper's code. Input: raw pixels / 255, no normalisation.
    """

    def __init__(self, *, width: int = 1, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        c1, c2, hidden = 6 * width, 16 * width, 120 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (image_size // 4) ** 2, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        )
        self.out_dim = hidden
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.features(x)


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet without its classifier: pooled features of size 512 or 2048.

    ``weights`` is passed to ``torchvision.models.get_model`` (None, "DEFAULT", a weights
    name); weights are never loaded implicitly.
    """

    def __init__(self, arch: str, *, weights=None, in_channels: int = 3):
        super().__init__()
        net = torchvision.models.get_model(arch, weights=weights)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x):
        return self.net(x)


class Normalize(nn.Module):
    """A backbone behind a fixed per-channel mean/std normalisation (the dataset's), so a saved
    model normalises its own inputs and augmentations run on raw [0, 1] pixels."""

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone, self.out_dim = backbone, backbone.out_dim
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.backbone((x - self.mean) / self.std)


BACKBONES = {
    "small_cnn": SmallCNN,
    "resnet18": lambda **kw: TorchvisionResNet("resnet18", **kw),
    "resnet50": lambda **kw: TorchvisionResNet("resnet50", **kw),
    "resnet12": ResNet12,  # CIFAR-100 / tieredImageNet (ANCOR, SCGM); CIFAR needs dropblock_size=2
}


def get_backbone(name: str, **params) -> nn.Module:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'; valid backbones: {', '.join(BACKBONES)}")
    try:
        return BACKBONES[name](**params)
    except TypeError as e:
        raise ConfigError(f"bad parameters for backbone '{name}': {e}") from e

