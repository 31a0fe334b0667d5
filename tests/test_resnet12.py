"""The RFS-style ResNet-12 (ANCOR / SCGM on CIFAR-100 and tieredImageNet) and its DropBlock."""

import pytest
import torch
import torch.nn.functional as F

from fgbench.models.resnet12 import DROPBLOCK_RAMP_BATCHES, DropBlock, ResNet12, ResNet12Block


def _ramp_to_full(model):
    """Put every block at the end of the DropBlock ramp (drop probability = drop_rate)."""
    for m in model.modules():
        if isinstance(m, ResNet12Block):
            m.num_batches_tracked.fill_(DROPBLOCK_RAMP_BATCHES)


@pytest.mark.parametrize("size,block", [(32, 2), (84, 5)])
def test_output_shape_eval_and_train(size, block):
    torch.manual_seed(0)
    model = ResNet12(dropblock_size=block)
    assert model.out_dim == 640
    x = torch.randn(2, 3, size, size)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 640)
    model.train()
    _ramp_to_full(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 640) and torch.isfinite(out).all()


def test_in_channels_and_widths():
    model = ResNet12(in_channels=1, channels=(8, 16, 24, 32)).eval()
    assert model.out_dim == 32
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 32)
    flat = ResNet12(channels=(8, 16, 24, 32), avg_pool=False).eval()
    assert flat.out_dim is None
    assert flat(torch.randn(2, 3, 84, 84)).shape == (2, 32 * 5 * 5)
    with pytest.raises(TypeError):
        ResNet12(3)


def test_parameter_count_matches_hand_computation():
    def expected(c_in, widths):
        total = 0
        for c in widths:
            total += 9 * c_in * c + 9 * c * c + 9 * c * c  # conv1..conv3, 3x3, no bias
            total += 3 * 2 * c  # bn1..bn3: weight + bias
            total += c_in * c + 2 * c  # shortcut: 1x1 conv (no bias) + BN
            c_in = c
        return total

    n = sum(p.numel() for p in ResNet12().parameters())
    assert n == expected(3, (64, 160, 320, 640)) == 12_424_320
    assert sum(p.numel() for p in ResNet12(in_channels=1, channels=(8, 16, 24, 32)).parameters()) == expected(
        1, (8, 16, 24, 32))


def test_state_dict_names_follow_rfs():
    keys = set(ResNet12().state_dict())
    for k in ("layer1.0.conv1.weight", "layer2.0.bn3.running_var", "layer4.0.downsample.0.weight",
              "layer4.0.downsample.1.bias", "layer3.0.num_batches_tracked"):
        assert k in keys


@pytest.mark.parametrize("size,maps", [(32, [16, 8, 4, 2]), (84, [42, 21, 10, 5])])
def test_stage_strides(size, maps):
    model = ResNet12().eval()
    with torch.no_grad():
        outs = model.stages(torch.randn(1, 3, size, size))
    assert [tuple(o.shape[1:]) for o in outs] == [(c, s, s) for c, s in zip((64, 160, 320, 640), maps)]


def test_eval_is_deterministic_and_dropblock_is_identity():
    torch.manual_seed(0)
    model = ResNet12(drop_rate=0.5, channels=(8, 16, 24, 32))
    _ramp_to_full(model)
    model.eval()
    x = torch.randn(3, 3, 84, 84)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    # eval forwards do not advance the ramp
    assert all(int(m.num_batches_tracked) == DROPBLOCK_RAMP_BATCHES
               for m in model.modules() if isinstance(m, ResNet12Block))
    db = DropBlock(block_size=5).eval()
    y = torch.randn(4, 8, 10, 10)
    assert torch.equal(db(y, 0.9), y)
    assert torch.equal(db.train()(y, 0.0), y)


def test_dropblock_schedule():
    block = ResNet12Block(in_channels=3, channels=4, drop_rate=0.1, drop_block=True, block_size=5)
    assert block.dropblock_prob() == 0.0
    x = torch.randn(2, 3, 20, 20)
    block.train()
    for _ in range(3):
        block(x)
    assert int(block.num_batches_tracked) == 3
    assert block.dropblock_prob() == pytest.approx(0.1 * 3 / 40000)
    block.num_batches_tracked.fill_(20000)
    assert block.dropblock_prob() == pytest.approx(0.05)
    block.num_batches_tracked.fill_(10 ** 6)
    assert block.dropblock_prob() == pytest.approx(0.1)
    block.eval()
    block(x)
    assert int(block.num_batches_tracked) == 10 ** 6


def test_block_too_large_for_map_raises_in_training():
    model = ResNet12(dropblock_size=5).train()  # CIFAR maps after stage 3 are 4x4
    with pytest.raises(ValueError, match="dropblock_size=2"):
        model(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("b", [2, 3, 5])
def test_dropblock_drops_square_blocks_and_rescales(b):
    torch.manual_seed(1)
    db = DropBlock(block_size=b).train()
    x = torch.rand(8, 16, 12, 12) + 0.5  # strictly positive, so zeros come only from the mask
    out = db(x, 0.3)
    dropped = out == 0
    kept = ~dropped
    assert dropped.any() and kept.any()
    # kept activations rescaled by numel / number kept (counted over the whole batch)
    scale = x.numel() / kept.sum().item()
    torch.testing.assert_close(out[kept], x[kept] * scale)
    # the dropped set is a union of b x b squares lying inside the map: a morphological
    # opening (erode then dilate with a b x b square, no padding for the erosion) leaves it as is
    d = dropped.float()
    eroded = -F.max_pool2d(-d, b, stride=1)  # 1 where a whole b x b square is dropped
    opened = F.max_pool2d(F.pad(eroded, [b - 1] * 4), b, stride=1)
    assert torch.equal(opened, d)
    # a channel with exactly b^2 dropped cells holds one block: a contiguous b x b square
    # (sparse seeds, so that many channels have exactly one)
    single = 0
    for mask in (db(x, 0.02) == 0).reshape(-1, 12, 12):
        if mask.sum() == b * b:
            rows, cols = mask.nonzero(as_tuple=True)
            assert rows.max() - rows.min() == b - 1 and cols.max() - cols.min() == b - 1
            single += 1
    assert single > 0


def test_dropblock_drop_fraction_and_expectation():
    torch.manual_seed(2)
    b, h, p = 5, 10, 0.1
    db = DropBlock(block_size=b).train()
    x = torch.rand(64, 16, h, h)
    # expected drop fraction: a cell covered by k seed positions survives with prob (1-gamma)^k
    gamma = p / b**2 * h * h / (h - b + 1) ** 2
    k = F.conv2d(F.pad(torch.ones(1, 1, h - b + 1, h - b + 1), [b - 1] * 4), torch.ones(1, 1, b, b))
    expected_drop = 1 - ((1 - gamma) ** k).mean().item()
    drops, means = [], []
    for _ in range(50):
        out = db(x, p)
        drops.append((out == 0).float().mean().item())
        means.append(out.mean().item())
    assert sum(drops) / len(drops) == pytest.approx(expected_drop, rel=0.05)
    assert 0.5 * p < expected_drop < p
    # the expected activation is preserved
    assert sum(means) / len(means) == pytest.approx(x.mean().item(), rel=0.01)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(3)
    model = ResNet12(dropblock_size=2).train()
    _ramp_to_full(model)
    out = model(torch.randn(4, 3, 32, 32))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
