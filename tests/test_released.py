"""Released checkpoints of the seed methods load into fgbench's modules (models/released.py).

Each test builds a model with the release's own module names (read in the released code; the
repository and file are named at each class), saves it the way the release's code saves it,
loads the file into the fgbench method and checks that no key is missing or left over, that the
loaded tensors are the saved ones, and that fgbench embeds a fixed batch as the release's weights
do.
"""

import argparse
import copy
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fgbench.errors import CheckpointError, ConfigError
from fgbench.methods import build_method
from fgbench.models import Normalize, get_backbone
from fgbench.models.released import RELEASES, convert, group_keys, kept_as_built, load_released, read_checkpoint

TRUNK = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm parameters and statistics, biases and other vectors drawn afresh (positive running
    variances), so no tensor of the release equals what fgbench builds (weight matrices already
    come from a random init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point() and (t.dim() <= 1 or t.numel() < 1000):
                fresh = torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var") else \
                    torch.randn(t.shape, generator=g) * 0.05
                t.copy_(fresh)
    return module


def state_of(module: nn.Module, names=TRUNK) -> dict:
    return {k: v for k, v in module.state_dict().items() if k.split(".")[0] in names}


def assert_same_state(got: dict, want: dict):
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def resnet_trunk(arch: str = "resnet50") -> dict:
    """A torchvision ResNet's modules up to the pooling (the fc left out)."""
    net = getattr(torchvision.models, arch)()
    return {name: child for name, child in net.named_children() if name != "fc"}


def trunk_forward(modules, x, pool=lambda x: F.adaptive_avg_pool2d(x, 1)):
    for name in (*TRUNK[:2], "relu", "maxpool", *TRUNK[2:]):
        x = getattr(modules, name)(x)
    return torch.flatten(pool(x), 1)


class DDP(nn.Module):
    """DistributedDataParallel's state_dict: the wrapped model's keys behind ``module.``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


# --- ANCOR and SCGM-A: momentum encoders ----------------------------------------------------------

class SequentialFC(nn.Module):
    """guybuk/ANCOR ancor/head_factory.py, head 'seq': fc1 (2048 -> 128), fc2 (128 -> C) on ReLU(fc1)."""

    def __init__(self, in_dim, dim, num_classes):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        e = self.fc1(x)
        return e, self.fc2(F.relu(e))


class SequentialEMFC(nn.Module):
    """nijingchao/SCGM scgm_a/head_factory.py, head 'seq_em': fc1, then ReLU(N(e)) @ mu_y^T (norm=True,
    the --head-norm default)."""

    def __init__(self, in_dim, dim, num_classes, num_subclasses):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim)
        self.mu_y = nn.Parameter(torch.randn(num_classes, dim))
        self.mu_z = nn.Parameter(torch.randn(num_subclasses, dim))

    def forward(self, x):
        e = self.fc1(x)
        return e, F.relu(F.normalize(e, dim=1)) @ self.mu_y.T


class MomentumModel(nn.Module):
    """guybuk/ANCOR ancor/ancor.py ANCOR (and SCGM scgm_a/moencoder.py MoEncoder): encoder_q,
    encoder_k, buffers queue (C, dim, K, queue 'multi' of ancor/queue_factory.py) and queue_ptr (C,).
    The encoders are model_pool networks whose fc the head factory replaced by
    Sequential(Linear(d, d), ReLU, head) (--mlp); the key head ends in a Linear(d, dim)."""

    def __init__(self, head_q, num_classes, dim=128, queue_size=8, arch="resnet50"):
        super().__init__()
        self.encoder_q = getattr(torchvision.models, arch)()
        d = self.encoder_q.fc.in_features
        self.encoder_q.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), head_q)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.encoder_k.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, dim))
        self.register_buffer("queue", F.normalize(torch.randn(num_classes, dim, queue_size), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(num_classes, dtype=torch.long))


def assert_embeds_as_query_encoder(method, encoder_q):
    """fgbench's head and logits layers give the release query encoder's (embedding, logits)."""
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        e, logits = encoder_q(x)
        method.eval()
        torch.testing.assert_close(method.embed(x, "head"), e)
        torch.testing.assert_close(method.embed(x, "logits"), logits)


def ancor_checkpoint(path, num_classes=17):
    """A checkpoint as ANCOR's train.py save_checkpoint writes it: the DDP model's state dict."""
    model = randomised(MomentumModel(SequentialFC(2048, 128, num_classes), num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": DDP(model).state_dict(),
                "optimizer": optimizer.state_dict(), "best_accs": [0.0, 0.61]}, path)
    return model.eval()


def build(name, backbone="resnet50", num_classes=17, **params):
    backbone = get_backbone(backbone, **params.pop("backbone_params", {}))
    return build_method(name, backbone, num_classes=num_classes, num_samples=10, params=params)


@pytest.fixture(scope="module")
def ancor_living17(tmp_path_factory):
    """(release model, path): ANCOR's living17 ResNet-50 release, as train.py saves it."""
    path = tmp_path_factory.mktemp("ancor") / "checkpoint_0199.pth.tar"
    return ancor_checkpoint(path), path


def test_ancor_living17_resnet50_ddp_checkpoint_loads_and_embeds_as_released(ancor_living17):
    release, path = ancor_living17
    method = build("ancor", queue_size=8)
    load_released(method, "ancor", path)
    fc = release.encoder_q.fc
    assert_same_state(method.backbone.net.state_dict(), state_of(release.encoder_q))
    assert_same_state(method.projector.state_dict(), {"0.weight": fc[0].weight, "0.bias": fc[0].bias,
                                                      "2.weight": fc[2].fc1.weight, "2.bias": fc[2].fc1.bias})
    assert_same_state(method.classifier.state_dict(), fc[2].fc2.state_dict())
    assert_embeds_as_query_encoder(method, release.encoder_q)


def test_ancor_resnet12_checkpoint_behind_normalize(tmp_path):
    # ANCOR's CIFAR-100 / tieredImageNet releases: models/resnet_few_shot.py (RFS ResNet-12) keys
    # layer{1-4}.0.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}; its fc is the head.
    trunk = randomised(get_backbone("resnet12", dropblock_size=2))
    rfs = {k: v for k, v in trunk.state_dict().items() if not k.endswith(".0.num_batches_tracked")}
    head = randomised(nn.Sequential(nn.Linear(640, 640), nn.ReLU(), SequentialFC(640, 128, 20)), seed=1)
    state = {f"module.encoder_q.{k}": v for k, v in rfs.items()}
    state.update({f"module.encoder_q.fc.{k}": v for k, v in head.state_dict().items()})
    state.update({f"module.encoder_k.{k}": v.clone() for k, v in rfs.items()})
    state.update({"module.queue": torch.randn(20, 128, 8), "module.queue_ptr": torch.zeros(20, dtype=torch.long)})
    torch.save({"epoch": 200, "arch": "resnet12forcifar", "state_dict": state}, tmp_path / "ancor_cifar.pth.tar")
    backbone = Normalize(get_backbone("resnet12", dropblock_size=2), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    method = build_method("ancor", backbone, num_classes=20, num_samples=0, params={"queue_size": 8})
    load_released(method, "ancor", tmp_path / "ancor_cifar.pth.tar")
    loaded = method.backbone.backbone.state_dict()
    assert_same_state({k: v for k, v in loaded.items() if k in rfs}, rfs)
    assert torch.equal(method.backbone.mean.flatten(), torch.tensor([0.5] * 3))  # kept as fgbench built it
    torch.testing.assert_close(method.classifier.weight, head[2].fc2.weight, rtol=0, atol=0)
    # the release's network on inputs normalised as the release's transform does
    assert_embeds_as_query_encoder(method, lambda x: head(trunk.eval()((x - 0.5) / 0.25)))


def test_scgm_a_bare_state_dict(tmp_path):
    # nijingchao/SCGM train_scgm_a.py: torch.save(model.module.state_dict(), 'pretrain_model/scgm_a_living17 .pth');
    # --arch resnet18 (scgm_a/arch_factory.py model_pool) instead of the default resnet50: the same names
    release = randomised(MomentumModel(SequentialEMFC(512, 128, 17, 100), 17, arch="resnet18")).eval()
    torch.save(release.state_dict(), tmp_path / "scgm_a_living17 .pth")
    method = build("scgm_a", backbone="resnet18", queue_size=8)
    load_released(method, "scgm_a", tmp_path / "scgm_a_living17 .pth")
    head = release.encoder_q.fc[2]
    assert torch.equal(method.mu_y, head.mu_y) and torch.equal(method.mu_z, head.mu_z)
    assert_same_state(method.backbone.net.state_dict(), state_of(release.encoder_q))
    assert_embeds_as_query_encoder(method, release.encoder_q)


def test_moco_v2_checkpoint_loads_query_encoder_and_projector(tmp_path):
    # facebookresearch/moco moco/builder.py: encoder_q = base_encoder(num_classes=dim), fc replaced by
    # Sequential(Linear, ReLU, fc) with --mlp; queue (dim, K), queue_ptr (1,); main_moco.py saves the DDP state dict
    release = MomentumModel(nn.Linear(512, 128), 1, arch="resnet18")
    release.queue, release.queue_ptr = F.normalize(torch.randn(128, 8), dim=0), torch.zeros(1, dtype=torch.long)
    release = randomised(release).eval()
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": DDP(release).state_dict()},
               tmp_path / "checkpoint_0799.pth.tar")
    method = build("moco", backbone="resnet18", queue_size=8)
    load_released(method, "moco", tmp_path / "checkpoint_0799.pth.tar")
    assert_same_state(method.backbone.net.state_dict(), state_of(release.encoder_q))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(method.eval().embed(x, "head"), release.encoder_q(x))


# --- SCGM-G ---------------------------------------------------------------------------------------

class ScgmGResNet(nn.Module):
    """nijingchao/SCGM scgm_g/scgm_resnet.py ResNet: torchvision's ResNet modules without fc, then
    fc_enc (Linear, ReLU, Linear; with_mlp) and the parameters mu_y, mu_z. train_scgm_g.py uses its
    resnet50; its resnet18 (the same class and names, basic blocks) keeps the tests fast."""

    def __init__(self, num_classes, num_subclasses, dim=128, arch="resnet18"):
        super().__init__()
        for name, child in resnet_trunk(arch).items():
            self.add_module(name, child)
        d = self.layer4[-1].conv1.in_channels
        self.fc_enc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, dim))
        self.mu_y = nn.Parameter(torch.randn(num_classes, dim))
        self.mu_z = nn.Parameter(torch.randn(num_subclasses, dim))

    def forward(self, x):
        return self.fc_enc(trunk_forward(self, x))


def test_scgm_g_bare_state_dict(tmp_path):
    # train_scgm_g.py: torch.save(net.module.state_dict(), 'pretrain_model/scgm_g_living17.pth')
    release = randomised(ScgmGResNet(17, 100)).eval()
    torch.save(release.state_dict(), tmp_path / "scgm_g_living17.pth")
    method = build("scgm_g", backbone="resnet18")
    load_released(method, "scgm_g", tmp_path / "scgm_g_living17.pth")
    assert_same_state(method.backbone.net.state_dict(), state_of(release))
    assert_same_state(method.fc_enc.state_dict(), release.fc_enc.state_dict())
    assert torch.equal(method.mu_y, release.mu_y) and torch.equal(method.mu_z, release.mu_z)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(method.eval().embed(x, "head"), release(x))


# --- RevDML and LSD -------------------------------------------------------------------------------

class RevdmlResNet50(nn.Module):
    """Confusezius/Revisiting_Deep_Metric_Learning_PyTorch architectures/resnet50.py Network:
    ``model`` is Cadene's pretrainedmodels ResNet-50 (torchvision's modules, the classifier named
    last_linear, here the embedding), ``layer_blocks`` a ModuleList of model.layer1-4 (the same
    modules, so the state dict holds them twice); 'normalize' in the arch name L2-normalises."""

    def __init__(self, embed_dim=128):
        super().__init__()
        self.model = nn.Module()
        for name, child in resnet_trunk().items():
            self.model.add_module(name, child)
        self.model.last_linear = nn.Linear(2048, embed_dim)
        self.layer_blocks = nn.ModuleList([self.model.layer1, self.model.layer2, self.model.layer3, self.model.layer4])

    def forward(self, x):
        return F.normalize(self.model.last_linear(trunk_forward(self.model, x)), dim=-1)


@pytest.fixture
def revdml_logger_module(monkeypatch):
    """RevDML's utilities/logger.py LOGGER, importable while the checkpoint is written and gone
    when fgbench reads it, as on a machine without the RevDML repository."""
    module = types.ModuleType("utilities.logger")

    class LOGGER:
        def __init__(self):
            self.prop = argparse.Namespace(save_path="Training_Results/cub200")
            self.progress_saver = {"Train": {"loss": [0.3, 0.2]}}

    LOGGER.__module__, LOGGER.__qualname__ = "utilities.logger", "LOGGER"
    module.LOGGER = LOGGER
    monkeypatch.setitem(sys.modules, "utilities", types.ModuleType("utilities"))
    monkeypatch.setitem(sys.modules, "utilities.logger", module)
    return module


@pytest.fixture(scope="module")
def revdml_release():
    return randomised(RevdmlResNet50()).eval()


def revdml_checkpoint(path, release, logger_module):
    # evaluation's set_checkpoint: {'state_dict', 'opt', 'progress', 'aux'}, in the pre-1.6 (non-zip)
    # format the release's PyTorch wrote
    opt = argparse.Namespace(arch="resnet50_frozen_normalize", embed_dim=128, loss="triplet")
    torch.save({"state_dict": release.state_dict(), "opt": opt, "progress": logger_module.LOGGER(), "aux": None}, path,
               _use_new_zipfile_serialization=False)
    for name in ("utilities.logger", "utilities"):
        del sys.modules[name]
    return release


def test_revdml_checkpoint_with_pickled_logger_loads_without_running_its_code(tmp_path, revdml_release,
                                                                             revdml_logger_module):
    path = tmp_path / "checkpoint_Test_discriminative_e_recall@1.pth.tar"
    release = revdml_checkpoint(path, revdml_release, revdml_logger_module)
    assert type(read_checkpoint(path)["progress"]).__module__ == "utilities.logger"  # an inert stand-in
    method = build("triplet", num_classes=100, backbone_params={"frozen_bn": True})
    load_released(method, "revdml", path)
    assert_same_state(method.backbone.net.state_dict(), state_of(release.model))
    assert_same_state(method.head.state_dict(), release.model.last_linear.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(method.eval().embed(x, "head"), release(x))


def test_lsd_net_epoch_file_loads_into_the_wrapped_base_method(tmp_path, revdml_release):
    # ZelongZeng/Improving-Generalization-of-Metric-Learning-via-Listwise-Self-distillation main.py
    # save_network: torch.save(network.cpu().state_dict(), 'net_149.pth')
    release = revdml_release
    torch.save(release.state_dict(), tmp_path / "net_149.pth")
    method = build("lsd", num_classes=100, base_loss="margin")
    load_released(method, "lsd", tmp_path / "net_149.pth")
    assert_same_state(method.base.head.state_dict(), release.model.last_linear.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(method.eval().embed(x, "head"), release(x))


def test_revdml_layer_blocks_that_differ_from_model_layers_are_refused(revdml_release):
    state = dict(revdml_release.state_dict())
    state["layer_blocks.3.0.conv1.weight"] = state["layer_blocks.3.0.conv1.weight"] + 1
    with pytest.raises(CheckpointError, match="layer_blocks.3.0.conv1.weight and model.layer4.0.conv1.weight"):
        convert("revdml", {"state_dict": state}, build("triplet", num_classes=100))


# --- STML -----------------------------------------------------------------------------------------

class StmlResnet18(nn.Module):
    """tjddus9597/STML-CVPR22 code/net/resnet.py Resnet18 (student): ``model`` is torchvision's
    ResNet-18 with its ImageNet fc kept, plus gap, gmp, embedding_g (512 -> 1024) and embedding_f
    (512 -> 512)."""

    def __init__(self, embedding_size=512, bg_embedding_size=1024):
        super().__init__()
        self.model = torchvision.models.resnet18()
        self.model.gap, self.model.gmp = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)
        self.model.embedding_g = nn.Linear(512, bg_embedding_size)
        self.model.embedding_f = nn.Linear(512, embedding_size)


def test_stml_best_pth_loads_both_heads_and_drops_the_imagenet_fc(tmp_path):
    # code/main.py: torch.save({'model_state_dict': model_student.state_dict()}, '{LOG_DIR}/best.pth')
    release = randomised(StmlResnet18()).eval()
    torch.save({"model_state_dict": release.state_dict()}, tmp_path / "best.pth")
    method = build("stml", backbone="resnet18")
    load_released(method, "stml", tmp_path / "best.pth")
    assert_same_state(method.backbone.net.state_dict(), state_of(release.model))
    assert_same_state(method.head.state_dict(), release.model.embedding_f.state_dict())
    assert_same_state(method.head_g.state_dict(), release.model.embedding_g.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        # the release sums average and max pooling (code/net/resnet.py), as fgbench's STML does
        features = trunk_forward(release.model, x, pool=lambda x: release.model.gap(x) + release.model.gmp(x))
        torch.testing.assert_close(method.eval().embed(x, "head"), release.model.embedding_f(features))


# --- vMF ------------------------------------------------------------------------------------------

class VmfResNet(nn.Module):
    """google-research/vmf_embeddings third_party/dml_cross_entropy/resnet.py ResNet (archs/arch.py
    Arch): encoder (replaced by create_encoder: the modules below again, in forward order), temp
    (1, 1) when learn_temp, remap (features -> d), classifier (d -> C, no bias), then torchvision's
    modules with a 3x3 first convolution (first_conv_3x3, CIFAR). The release builds it with
    Bottleneck [3, 4, 6, 3] (resnet50); basic blocks [2, 2, 2, 2] give the same names, faster."""

    def __init__(self, num_classes, dim=128, arch="resnet18"):
        super().__init__()
        trunk = resnet_trunk(arch)
        self.encoder = nn.Sequential(nn.Identity())
        self.temp = nn.Parameter(torch.zeros(1, 1) + 0.3)
        self.remap = nn.Linear(trunk["layer4"][-1].conv1.in_channels, dim)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        for name, child in trunk.items():
            self.add_module(name, child)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.encoder = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool, self.layer1, self.layer2,
                                     self.layer3, self.layer4, self.avgpool, nn.Flatten(), self.remap, self.classifier)


class NDigitMNISTArch(nn.Module):
    """google-research/vmf_embeddings archs/n_digit_mnist_arch.py: temp, then encoder =
    conv(6)-BN-ReLU-pool-conv(16)-BN-ReLU-pool-flatten-fc(120)-BN-ReLU, Linear(120, d), Linear(d, C, no bias)."""

    def __init__(self, num_classes, dim):
        super().__init__()
        self.temp = nn.Parameter(torch.zeros(1, 1) - 0.2)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(784, 120), nn.BatchNorm1d(120), nn.ReLU(),
            nn.Linear(120, dim), nn.Linear(dim, num_classes, bias=False))


def vmf_checkpoint(path, arch, z_kappa_mult):
    # vmf_embeddings/utils.py save_model
    optimizer = torch.optim.SGD(arch.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=15)
    # best_epoch's train_loss is np.mean(losses) in main.py: a numpy scalar beside the weights
    torch.save({"epoch": 41, "best_epoch": {"epoch": 41, "train_loss": np.float64(0.4), "valid_acc": 0.93},
                "arch_state_dict": arch.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict(), "z_kappa_mult": z_kappa_mult}, path)


def test_vmf_cifar_resnet_model_pt_loads_temperature_and_z_kappa_mult(tmp_path):
    release = randomised(VmfResNet(100)).eval()
    vmf_checkpoint(tmp_path / "model_41.pt", release, 2.75)
    method = build("vmf", backbone="resnet18", num_classes=100, backbone_params={"first_conv_3x3": True})
    load_released(method, "vmf", tmp_path / "model_41.pt")
    assert_same_state(method.backbone.net.state_dict(), state_of(release))
    assert method.temp.shape == () and method.temp.item() == release.temp.item()
    assert method.z_kappa_mult.item() == 2.75
    torch.testing.assert_close(method.classifier.weight, release.classifier.weight, rtol=0, atol=0)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # vmf's get_embeddings: z_kappa_mult * forward_embedding (encoder without the classifier)
        torch.testing.assert_close(method.eval().embed(x, "head"), 2.75 * release.encoder[:-1](x))


def test_vmf_mnist_arch_loads_into_small_cnn(tmp_path):
    release = randomised(NDigitMNISTArch(10, 3)).eval()
    vmf_checkpoint(tmp_path / "model_7.pt", release, 1.5)
    method = build("vmf", backbone="small_cnn", num_classes=10, embedding_dim=3)
    load_released(method, "vmf", tmp_path / "model_7.pt")
    assert_same_state(method.backbone.features.state_dict(),
                      {k[len("encoder."):]: v for k, v in release.state_dict().items()
                       if k.startswith("encoder.") and int(k.split(".")[1]) < 12})
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(method.eval().embed(x, "head"), 1.5 * release.encoder[:-1](x))


# --- bad input ------------------------------------------------------------------------------------

def test_a_checkpoint_of_another_release_names_missing_and_unexpected_keys_by_prefix(tmp_path):
    torch.save(ScgmGResNet(17, 100).state_dict(), tmp_path / "scgm_g_living17.pth")
    method = build("ancor", backbone="resnet18", queue_size=8)
    with pytest.raises(CheckpointError) as error:
        load_released(method, "ancor", tmp_path / "scgm_g_living17.pth")
    message = str(error.value)
    n_layer4 = sum(k.startswith("layer4.") for k in method.backbone.net.state_dict())
    assert f"backbone.net.layer4.* ({n_layer4} keys)" in message
    assert "unexpected, no rule maps them: mu_y, mu_z, conv1.weight, bn1.* (5 keys)" in message
    assert "layer4.* (30 keys), fc_enc.* (4 keys); expected" in message
    assert "expected: release 'ancor'" in message and "encoder_q.fc.2.fc2.*" in message


def test_truncated_checkpoint_lists_the_missing_group(ancor_living17):
    saved = torch.load(ancor_living17[1], weights_only=True)
    saved["state_dict"] = {k: v for k, v in saved["state_dict"].items() if ".layer4." not in k}
    method = build("ancor", queue_size=8)
    n_layer4 = sum(k.startswith("layer4.") for k in method.backbone.net.state_dict())
    with pytest.raises(CheckpointError, match=rf"missing, no release key maps to them: backbone\.net\.layer4\.\* "
                                              rf"\({n_layer4} keys\); expected") as error:
        convert("ancor", saved, method)
    assert "unexpected" not in str(error.value)


def test_wrong_number_of_classes_is_a_shape_mismatch():
    release = MomentumModel(SequentialFC(512, 128, 17), 17, arch="resnet18")
    method = build("ancor", backbone="resnet18", num_classes=13, queue_size=8)
    with pytest.raises(CheckpointError, match=r"classifier.weight \(release encoder_q.fc.2.fc2.weight \(17, 128\), "
                                              r"fgbench \(13, 128\)\)"):
        convert("ancor", DDP(release).state_dict(), method)


def test_release_method_and_file_errors(tmp_path):
    method = build("triplet", num_classes=10)
    with pytest.raises(CheckpointError, match="release 'ancor' loads into fgbench method ancor, not 'triplet'"):
        convert("ancor", {}, method)
    with pytest.raises(ConfigError, match="valid releases: ancor, moco, scgm_g, scgm_a, revdml, lsd, stml, vmf"):
        convert("moco_v3", {}, method)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_released(method, "revdml", tmp_path / "missing.pth")
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_released(method, "revdml", tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"entries \['epoch', 'weights'\], no state dict of tensors under "
                                              r"\['state_dict'\]"):
        convert("revdml", {"epoch": 3, "weights": [1, 2]}, method)


def test_state_no_release_has_is_kept_as_built():
    lsd = build("lsd", backbone="small_cnn", num_classes=5, base_loss="margin")
    assert kept_as_built(lsd) == {"base.loss.beta": "loss parameters"}  # RevDML/LSD save the network only
    assert kept_as_built(build("proxynca", backbone="small_cnn", num_classes=5)) == {"loss.proxies": "loss parameters"}
    stml = build("stml", backbone="small_cnn")
    assert set(kept_as_built(stml)) == {k for k in stml.state_dict() if k.startswith(("teacher_backbone.",
                                                                                        "teacher_head_g."))}


def test_group_keys():
    keys = ["backbone.net.layer4.0.conv1.weight", "backbone.net.layer4.2.bn3.bias", "head.weight", "mu_y", "queue"]
    assert group_keys(keys) == ["backbone.net.layer4.* (2 keys)", "head.weight", "mu_y", "queue"]
    assert group_keys([f"block{i}.weight" for i in range(5)], most=3) == [
        "block0.weight", "block1.weight", "block2.weight", "... 2 more groups"]


def test_every_release_names_its_code_and_methods():
    assert set(RELEASES) == {"ancor", "moco", "scgm_g", "scgm_a", "revdml", "lsd", "stml", "vmf"}
    for release in RELEASES.values():
        assert "/" in release.code and release.methods and release.layouts[-1].signature is None


@pytest.mark.parametrize("zip_format", [True, False])
def test_objects_beside_the_weights_are_read_as_inert_stand_ins(tmp_path, revdml_logger_module, zip_format):
    saved = {"state_dict": {"w": torch.arange(3.0)}, "opt": argparse.Namespace(lr=1e-5),
             "progress": revdml_logger_module.LOGGER()}
    torch.save(saved, tmp_path / "c.pth", _use_new_zipfile_serialization=zip_format)
    del sys.modules["utilities.logger"]
    loaded = read_checkpoint(tmp_path / "c.pth")
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))
    assert type(loaded["opt"]).__name__ == "Namespace" and loaded["opt"].state == {"lr": 1e-5}
    assert type(loaded["progress"]).__module__ == "utilities.logger" and not hasattr(loaded["progress"], "prop")
