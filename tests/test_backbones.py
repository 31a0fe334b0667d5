"""Backbones: weights from a saved state dict, frozen BatchNorm statistics, GoogLeNet."""

import pytest
import torch
import torchvision

from fgbench.errors import ConfigError
from fgbench.models import get_backbone


def test_weights_file_loads_every_trunk_weight(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=7)  # a different head: it is ignored
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    backbone = get_backbone("resnet18", weights_file=str(tmp_path / "weights.pth"))
    loaded = backbone.net.state_dict()
    for name, value in source.state_dict().items():
        if not name.startswith("fc."):
            torch.testing.assert_close(loaded[name], value)
    x = torch.rand(2, 3, 32, 32)
    source.fc = torch.nn.Identity()
    torch.testing.assert_close(backbone.eval()(x), source.eval()(x))


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ConfigError, match="does not fit the architecture"):
        get_backbone("resnet50", weights_file=str(tmp_path / "r18.pth"))
    with pytest.raises(ConfigError, match="cannot be read"):
        get_backbone("resnet18", weights_file=str(tmp_path / "missing.pth"))


def test_frozen_batchnorm_keeps_running_statistics_and_trains_affine():
    backbone = get_backbone("resnet18", frozen_bn=True).train()
    bn = backbone.net.bn1
    before = bn.running_mean.clone()
    backbone(torch.rand(4, 3, 32, 32) * 5).sum().backward()
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert bn.weight.grad is not None
    unfrozen = get_backbone("resnet18").train()
    unfrozen(torch.rand(4, 3, 32, 32) * 5)
    assert not torch.equal(unfrozen.net.bn1.running_mean, torch.zeros(64))


def test_googlenet_gives_1024_features():
    backbone = get_backbone("googlenet").eval()
    assert backbone.out_dim == 1024 and backbone(torch.rand(2, 3, 64, 64)).shape == (2, 1024)


def test_cifar_stem_keeps_resolution():
    backbone = get_backbone("resnet18", first_conv_3x3=True)
    assert backbone.net.conv1.kernel_size == (3, 3) and backbone.net.conv1.stride == (1, 1)
    assert backbone.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 512)
