"""Backbones: a small CNN for 28x28 grey images, ResNet-12 for few-shot benchmarks, and
torchvision ResNets for larger images.

Each builder returns an ``nn.Module`` mapping images (B, C, H, W) to features (B, out_dim);
methods put their heads on top.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .. import plugins
from ..errors import ConfigError
from .resnet12 import ResNet12
from .state_dicts import load_strict, read_state_dict


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


class TorchvisionBackbone(nn.Module):
    """A torchvision classification network without its classifier: pooled features (ResNet-18
    512, ResNet-50 2048, GoogLeNet 1024).

    Weights are never loaded implicitly: ``weights`` is a torchvision weights name ("DEFAULT",
    "IMAGENET1K_V1", needs the internet once) and ``weights_file`` a saved state dict of the same
    architecture (ImageNet weights on an offline machine); the classifier's entries are ignored,
    every other entry must match. ``frozen_bn`` keeps every BatchNorm in eval mode (running
    statistics frozen, affine parameters still trained), as RevDML's ``_frozen`` architectures.

    From scratch: torchvision's init (Kaiming-normal convolutions, fan-out, also for a replaced
    stem); ``zero_init_residual`` zeroes the last BatchNorm weight of every residual block, as the
    vMF paper's CIFAR ResNet-50 does (``third_party/dml_cross_entropy/resnet.py``).
    """

    def __init__(self, arch: str, *, weights=None, weights_file=None, frozen_bn: bool = False, in_channels: int = 3,
                 first_conv_3x3: bool = False, zero_init_residual: bool = False):
        super().__init__()
        import torchvision  # here, not at the top: the config check imports this module too

        if (in_channels != 3 or first_conv_3x3) and arch == "googlenet":
            raise ConfigError("backbone 'googlenet' takes RGB images and keeps its first convolution")
        if zero_init_residual and arch == "googlenet":
            raise ConfigError("backbone 'googlenet' has no residual blocks: drop zero_init_residual")
        options = _googlenet_options(weights, weights_file) if arch == "googlenet" else {
            "zero_init_residual": zero_init_residual}
        net = torchvision.models.get_model(arch, weights=weights, **options)
        if first_conv_3x3:  # the vMF paper's CIFAR ResNet-50: 3x3 stride-1 stem (its max-pool stays)
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if first_conv_3x3 or in_channels != 3:  # the init torchvision gives the stem it replaces
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        if arch == "googlenet":
            net.dropout = nn.Identity()  # it sits between the pooled features and the classifier
        if weights_file is not None:
            load_weights(net, weights_file, ignore=("fc.", "aux1.", "aux2.") if arch == "googlenet" else ("fc.",))
        self.net, self.frozen_bn = net, frozen_bn

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x):
        return self.net(x)


def _googlenet_options(weights, weights_file) -> dict:
    """GoogLeNet's build options. With ``weights`` torchvision itself builds the auxiliary heads
    (its checkpoint has them), loads, drops them and sets ``transform_input`` (its ImageNet
    weights expect inputs rescaled from ImageNet normalisation to [-1, 1]); it refuses an
    explicit ``aux_logits=False``. A ``weights_file`` (a saved torchvision checkpoint) gets the same
    network: no auxiliary heads (their entries are skipped), ``transform_input`` on."""
    if weights is not None:
        return {}
    return {"aux_logits": False, "init_weights": weights_file is None, "transform_input": weights_file is not None}


def load_weights(net: nn.Module, path, ignore=("fc.",)) -> None:
    """Load a state dict file into ``net`` strictly (:func:`state_dicts.load_strict`: one message
    naming the file and the mismatching keys), skipping the file's entries under a prefix in
    ``ignore`` (the classifier's)."""
    key = "backbone.weights_file"
    state = {k: v for k, v in read_state_dict(path, key).items() if not k.startswith(tuple(ignore))}
    load_strict(net, state, path, key, optional=ignore)


class AvgMaxPool(nn.Module):
    """Global average plus global max pooling, summed: STML's networks (``code/net/resnet.py``)."""

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1)


def set_global_pooling(backbone: nn.Module, kind: str) -> bool:
    """Make a torchvision backbone (possibly behind ``Normalize``) pool globally by ``kind``:
    "avg" (torchvision's) or "avg_max" (AvgMaxPool). False when ``backbone`` has no global
    average pool to replace (small_cnn, ResNet-12): the caller decides whether that is an error."""
    nets = [m.net for m in backbone.modules() if isinstance(m, TorchvisionBackbone)]
    if not nets or not isinstance(nets[0].avgpool, (nn.AdaptiveAvgPool2d, AvgMaxPool)):
        return False
    nets[0].avgpool = AvgMaxPool() if kind == "avg_max" else nn.AdaptiveAvgPool2d(1)
    return True


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
    "resnet18": lambda **kw: TorchvisionBackbone("resnet18", **kw),
    "resnet50": lambda **kw: TorchvisionBackbone("resnet50", **kw),
    "googlenet": lambda **kw: TorchvisionBackbone("googlenet", **kw),
    "resnet12": ResNet12,  # CIFAR-100 / tieredImageNet (ANCOR, SCGM); CIFAR needs dropblock_size=2
}


def _adopt(name: str, builder):
    """A plug-in's backbone builder (entry point group ``fgbench.backbones``)."""
    if not callable(builder):
        raise TypeError(f"{builder!r}, not a callable(**params) returning an nn.Module with out_dim")
    return builder


def list_backbones() -> list:
    """Every backbone name: the built-ins and the installed plug-ins' (``fgbench.plugins``)."""
    plugins.extend(plugins.BACKBONES, BACKBONES, _adopt)
    return list(BACKBONES)


def check_backbone(name: str, key: str = "backbone.name") -> None:
    if name not in list_backbones():
        raise ConfigError(f"unknown backbone '{name}' (config key '{key}'); valid backbones: {', '.join(BACKBONES)}")


def get_backbone(name: str, **params) -> nn.Module:
    check_backbone(name)
    try:
        return BACKBONES[name](**params)
    except TypeError as e:
        raise ConfigError(f"bad parameters for backbone '{name}': {e}") from e

