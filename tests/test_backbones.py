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
    with pytest.raises(ConfigError, match="backbone.weights_file.*r18.pth does not fit the model: missing"):
        get_backbone("resnet50", weights_file=str(tmp_path / "r18.pth"))
    with pytest.raises(ConfigError, match="cannot read .*missing.pth"):
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


def _saved_googlenet(tmp_path):
    """A torchvision GoogLeNet checkpoint as torchvision saves its ImageNet weights (with the
    auxiliary heads), random init: no download."""
    torch.manual_seed(2)
    source = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    torch.save(source.state_dict(), tmp_path / "googlenet.pth")
    return source


def _check_pretrained_googlenet(backbone, source):
    """STML's backbone: the checkpoint's trunk, no auxiliary heads, transform_input on (torchvision's
    ImageNet GoogLeNet expects it), no dropout on the features (train mode is deterministic)."""
    net = backbone.net
    assert net.transform_input and net.aux1 is None and net.aux2 is None and not net.aux_logits
    loaded = net.state_dict()
    for name, value in source.state_dict().items():
        if not name.startswith(("fc.", "aux1.", "aux2.")):
            torch.testing.assert_close(loaded[name], value)
    x = torch.rand(2, 3, 64, 64)
    source.eval().fc = torch.nn.Identity()
    source.transform_input = True
    torch.testing.assert_close(backbone.eval()(x), source(x))
    backbone.train()
    for m in backbone.modules():  # BatchNorm in eval: only dropout could make train mode random
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    torch.testing.assert_close(backbone(x), backbone(x))


def test_googlenet_from_a_saved_torchvision_checkpoint(tmp_path):
    source = _saved_googlenet(tmp_path)
    _check_pretrained_googlenet(get_backbone("googlenet", weights_file=str(tmp_path / "googlenet.pth")), source)


def test_googlenet_with_torchvision_weights(tmp_path, monkeypatch):
    """weights: torchvision builds it with its auxiliary heads and drops them (an explicit
    aux_logits=False is refused by torchvision). The download is replaced by the saved state dict."""
    source = _saved_googlenet(tmp_path)
    state = torch.load(tmp_path / "googlenet.pth", weights_only=True)
    monkeypatch.setattr(torchvision.models.GoogLeNet_Weights, "get_state_dict", lambda self, **kw: state)
    _check_pretrained_googlenet(get_backbone("googlenet", weights="IMAGENET1K_V1"), source)


def test_googlenet_from_scratch_has_no_transform_input():
    net = get_backbone("googlenet").net
    assert not net.transform_input and net.aux1 is None and isinstance(net.dropout, torch.nn.Identity)


def test_cifar_resnet50_initialised_as_the_vmf_release():
    """google-research/vmf_embeddings, third_party/dml_cross_entropy/resnet.py: Kaiming-normal
    (fan-out) convolutions, the 3x3 stem included, BatchNorm weight 1 and bias 0, and the last
    BatchNorm of every Bottleneck (bn3) zeroed."""
    torch.manual_seed(3)
    net = get_backbone("resnet50", first_conv_3x3=True, zero_init_residual=True).net
    blocks = [m for m in net.modules() if isinstance(m, torchvision.models.resnet.Bottleneck)]
    assert len(blocks) == 16 and all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    assert torch.equal(blocks[0].bn1.weight, torch.ones(64)) and torch.equal(net.bn1.bias, torch.zeros(64))
    stem = net.conv1.weight  # 64 x 3 x 3 x 3: Kaiming-normal std sqrt(2 / fan_out) = sqrt(2 / 576)
    assert stem.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.1)
    plain = get_backbone("resnet50", first_conv_3x3=True).net  # without the option: torchvision's
    assert torch.count_nonzero(plain.layer1[0].bn3.weight) == 256
    with pytest.raises(ConfigError, match="zero_init_residual"):
        get_backbone("googlenet", zero_init_residual=True)
