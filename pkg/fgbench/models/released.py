"""Released checkpoints of the seed methods, loaded into fgbench's own modules.

Each entry of ``RELEASES`` says what a seed repository's code writes (which file, which dict
around the state dict), the key layout of its model (read in the released code; the repository
and files are named in ``code``), and the rules that rename those keys to the state-dict names of
the fgbench method it fits. ``load_released(method, release, path)`` reads a file and loads it
into an fgbench method built the usual way (``methods.build_method``); ``convert`` is the pure
renaming, for tests and tools.

Rules are ``(release prefix, fgbench prefix)`` pairs, the first match wins; a prefix without a
trailing dot matches one key exactly, ``""`` matches every key. ``{trunk}`` in an fgbench prefix
stands for the backbone network inside the method (``backbone.net.`` for a torchvision ResNet,
``backbone.backbone.net.`` behind ``Normalize``, ``backbone.`` for ResNet-12 and the small CNN).
Keys fgbench does not need (ANCOR's queues and key encoder, an unused ImageNet classifier) are
dropped by name; a module the release registers twice (RevDML's ``layer_blocks``, vMF's
``encoder``) is checked to be the same tensors and read once. Every other key must map onto an
fgbench key of the same shape, and every fgbench key must receive one, except the state fgbench
has and no release does (listed by ``kept_as_built``): anything else stops with a
``CheckpointError`` listing the missing and unexpected keys grouped by prefix and the layout the
release was expected to have. Nothing is ever loaded with ``strict=False``.
"""

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .backbones import Normalize, SmallCNN, TorchvisionBackbone
from .resnet12 import ResNet12, ResNet12Block


@dataclass(frozen=True)
class Layout:
    """One model definition of a release and the rules that rename its keys.

    ``signature``: a key only this layout has (None: the release's fallback layout).
    ``rules``: (release prefix, fgbench prefix), first match wins. ``dropped``: (release prefix,
    why fgbench does not need it). ``aliases``: (second name, first name) of a module the release
    registers under two names. ``extras``: (fgbench key, entries of the saved dict that may hold
    it) for state the release keeps beside its state dict.
    """

    keys: str
    rules: tuple
    signature: str = None
    dropped: tuple = ()
    aliases: tuple = ()
    extras: tuple = ()


@dataclass(frozen=True)
class Release:
    """A seed method's released checkpoint format: which fgbench methods and backbones it fits,
    the code the layout was read from, how the file is saved and which dict entry holds the state
    dict (``state_keys``; a bare state dict is always accepted)."""

    name: str
    methods: tuple
    backbones: tuple
    code: str
    saved: str
    state_keys: tuple
    layouts: tuple

    def describe(self) -> str:
        keys = " | ".join(layout.keys for layout in self.layouts)
        return (f"release '{self.name}' ({self.code}) is {self.saved}; its keys: {keys}; it loads into fgbench "
                f"method {' / '.join(self.methods)} on backbone {' / '.join(self.backbones)}")


_KEY_ENCODER = (("encoder_k.", "the key encoder: a momentum copy, used only in training"),
                ("queue", "the key queue(s), used only in training"),
                ("queue_ptr", "the queue write pointer(s), used only in training"))

# RevDML's Network registers model.layer1..4 a second time as the ModuleList layer_blocks.
_REVDML_LAYOUT = Layout(
    keys="model.{conv1,bn1,layer1-4}.* (Cadene's pretrainedmodels ResNet-50: torchvision naming, classifier "
         "renamed last_linear), model.last_linear.* (the embedding), layer_blocks.0-3.* (model.layer1-4 again)",
    rules=(("model.last_linear.", "head."), ("model.", "{trunk}")),
    aliases=tuple((f"layer_blocks.{i}.", f"model.layer{i + 1}.") for i in range(4)))

_VMF_EXTRAS = (("z_kappa_mult", ("z_kappa_mult", "z_mult")),)

RELEASES = {release.name: release for release in (
    Release(
        name="ancor", methods=("ancor",), backbones=("resnet50", "resnet12"),
        code="guybuk/ANCOR: train.py, ancor/ancor.py, ancor/ancor_model_generator.py, ancor/head_factory.py, "
             "models/__init__.py, models/resnet_few_shot.py",
        saved="train.py's save_checkpoint: {'epoch', 'arch', 'state_dict', 'optimizer', 'best_accs'} "
              "(checkpoint_NNNN.pth.tar, model_best.pth.tar), the DistributedDataParallel model's state dict (keys "
              "start with 'module.')",
        state_keys=("state_dict",),
        layouts=(Layout(
            keys="encoder_q.{conv1,bn1,layer1-4}.* (torchvision ResNet-50) or encoder_q.layer1-4.* (RFS ResNet-12), "
                 "encoder_q.fc.0.* + encoder_q.fc.2.fc1.* (projector, --mlp) or encoder_q.fc.fc1.*, "
                 "encoder_q.fc.2.fc2.* (coarse classifier of head 'seq'), encoder_k.*, queue, queue_ptr",
            rules=(("encoder_q.fc.0.", "projector.0."), ("encoder_q.fc.2.fc1.", "projector.2."),
                   ("encoder_q.fc.2.fc2.", "classifier."), ("encoder_q.fc.fc1.", "projector."),
                   ("encoder_q.fc.fc2.", "classifier."), ("encoder_q.", "{trunk}")),
            dropped=_KEY_ENCODER),)),
    Release(
        name="moco", methods=("moco",), backbones=("resnet50", "resnet18"),
        code="facebookresearch/moco: moco/builder.py, main_moco.py",
        saved="main_moco.py's save_checkpoint: {'epoch', 'arch', 'state_dict', 'optimizer'} (checkpoint_NNNN.pth.tar), "
              "the DistributedDataParallel model's state dict (keys start with 'module.')",
        state_keys=("state_dict",),
        layouts=(Layout(
            keys="encoder_q.{conv1,bn1,layer1-4}.* (torchvision ResNet), encoder_q.fc.0.* + encoder_q.fc.2.* "
                 "(MoCo v2's --mlp projector) or encoder_q.fc.* (v1), encoder_k.*, queue, queue_ptr",
            rules=(("encoder_q.fc.0.", "projector.0."), ("encoder_q.fc.2.", "projector.2."),
                   ("encoder_q.fc.", "projector."), ("encoder_q.", "{trunk}")),
            dropped=_KEY_ENCODER),)),
    Release(
        name="scgm_g", methods=("scgm_g",), backbones=("resnet50",),
        code="nijingchao/SCGM: train_scgm_g.py, scgm_g/scgm_resnet.py",
        saved="train_scgm_g.py's torch.save(net.module.state_dict(), 'pretrain_model/scgm_g_{dataset}.pth'), "
              "a bare state dict",
        state_keys=(),
        layouts=(Layout(
            keys="{conv1,bn1,layer1-4}.* (torchvision ResNet-50 naming, no fc), fc_enc.0.* + fc_enc.2.* (MLP "
                 "head, the default) or fc_enc.*, mu_y (superclass means), mu_z (subclass means)",
            rules=(("fc_enc.", "fc_enc."), ("mu_y", "mu_y"), ("mu_z", "mu_z"), ("", "{trunk}"))),)),
    Release(
        name="scgm_a", methods=("scgm_a",), backbones=("resnet50", "resnet18", "resnet12"),
        code="nijingchao/SCGM: train_scgm_a.py, scgm_a/moencoder.py, scgm_a/model_generator.py, "
             "scgm_a/head_factory.py, scgm_a/arch_factory.py",
        saved="train_scgm_a.py's torch.save(model.module.state_dict(), 'pretrain_model/scgm_a_{dataset} .pth'), "
              "a bare state dict",
        state_keys=(),
        layouts=(Layout(
            keys="encoder_q.{conv1,bn1,layer1-4}.* (torchvision ResNet), encoder_q.fc.0.* + encoder_q.fc.2.fc1.* "
                 "(projector of head 'seq_em') or encoder_q.fc.fc1.*, encoder_q.fc.2.mu_y, encoder_q.fc.2.mu_z, "
                 "encoder_k.*, queue, queue_ptr",
            rules=(("encoder_q.fc.0.", "projector.0."), ("encoder_q.fc.2.fc1.", "projector.2."),
                   ("encoder_q.fc.2.mu_y", "mu_y"), ("encoder_q.fc.2.mu_z", "mu_z"),
                   ("encoder_q.fc.fc1.", "projector."), ("encoder_q.fc.mu_y", "mu_y"), ("encoder_q.fc.mu_z", "mu_z"),
                   ("encoder_q.", "{trunk}")),
            dropped=_KEY_ENCODER),)),
    Release(
        name="revdml", methods=("triplet", "margin", "multisimilarity", "contrastive", "proxynca", "normsoftmax"),
        backbones=("resnet50",),
        code="Confusezius/Revisiting_Deep_Metric_Learning_PyTorch: architectures/resnet50.py, main.py, "
             "evaluation's set_checkpoint",
        saved="set_checkpoint's {'state_dict', 'opt' (argparse options), 'progress' (the LOGGER), 'aux'} "
              "(checkpoint_{Test,Val}_{evaltype}_{metric}.pth.tar)",
        state_keys=("state_dict",),
        layouts=(_REVDML_LAYOUT,)),
    Release(
        name="lsd", methods=("lsd",), backbones=("resnet50",),
        code="ZelongZeng/Improving-Generalization-of-Metric-Learning-via-Listwise-Self-distillation: main.py "
             "(save_network; the network is RevDML's architectures/resnet50.py)",
        saved="main.py's save_network: torch.save(network.state_dict(), 'net_{epoch}.pth'), a bare state dict "
              "(or RevDML's set_checkpoint dict)",
        state_keys=("state_dict",),
        layouts=(_REVDML_LAYOUT,)),
    Release(
        name="stml", methods=("stml",), backbones=("resnet18", "resnet50"),
        code="tjddus9597/STML-CVPR22: code/net/resnet.py (Resnet18, Resnet50), code/main.py",
        saved="code/main.py's torch.save({'model_state_dict': the student's state_dict()}, 'best.pth')",
        state_keys=("model_state_dict",),
        layouts=(Layout(
            keys="model.{conv1,bn1,layer1-4}.* (torchvision ResNet), model.fc.* (ImageNet classifier, unused), "
                 "model.embedding_f.* (the evaluated embedding f), model.embedding_g.* (g)",
            rules=(("model.embedding_f.", "head."), ("model.embedding_g.", "head_g."), ("model.", "{trunk}")),
            dropped=(("model.fc.", "torchvision's ImageNet classifier, kept by the release, unused by its forward"),)),
        )),
    Release(
        name="vmf", methods=("vmf", "cosine_softmax", "softmax"), backbones=("resnet50", "small_cnn"),
        code="google-research/vmf_embeddings: vmf_embeddings/utils.py (save_model), vmf_embeddings/main.py, "
             "archs/arch.py, archs/n_digit_mnist_arch.py, third_party/dml_cross_entropy/resnet.py",
        saved="utils.save_model's {'epoch', 'best_epoch', 'arch_state_dict', 'optimizer_state_dict', "
              "'scheduler_state_dict', 'z_kappa_mult'} (model_{epoch}.pt)",
        state_keys=("arch_state_dict",),
        layouts=(
            Layout(
                keys="ResNet-50: {conv1,bn1,layer1-4}.*, remap.* (the embedding), classifier.weight, temp, and "
                     "encoder.0-11.* (the same modules again)",
                signature="remap.weight",
                rules=(("remap.", "head."), ("classifier.", "classifier."), ("temp", "temp"), ("", "{trunk}")),
                aliases=(("encoder.0.", "conv1."), ("encoder.1.", "bn1."), ("encoder.4.", "layer1."),
                         ("encoder.5.", "layer2."), ("encoder.6.", "layer3."), ("encoder.7.", "layer4."),
                         ("encoder.10.", "remap."), ("encoder.11.", "classifier.")),
                extras=_VMF_EXTRAS),
            Layout(
                keys="NDigitMNISTArch: encoder.0-11.* (conv-BN-pool x2, fc 120), encoder.12.* (the embedding), "
                     "encoder.13.weight (class weights), temp",
                rules=(("encoder.12.", "head."), ("encoder.13.", "classifier."), ("temp", "temp"),
                       ("encoder.", "{trunk}features.")),
                extras=_VMF_EXTRAS),
        )),
)}


def get_release(name: str) -> Release:
    if name not in RELEASES:
        raise ConfigError(f"unknown released checkpoint '{name}'; valid releases: {', '.join(RELEASES)}")
    return RELEASES[name]


# --- reading ------------------------------------------------------------------------------------

class _Opaque:
    """Stands in for a class a checkpoint pickles beside its weights (RevDML's LOGGER, argparse
    options, numpy scalars): built without running any of its code, its state kept as data."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def _opaque(name: str) -> tuple:
    """(stub class, name) for the global ``name`` (``module.qualname``) of a checkpoint."""
    module, _, qualname = name.rpartition(".")
    return type(qualname, (_Opaque,), {"__module__": module}), name


def _refused_globals(path) -> list:
    """The globals ``weights_only`` refuses in a zip checkpoint (none listed for the legacy format,
    whose refusals are read one by one from the error instead)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError):
        return []


def _load_with_stubs(path, max_globals: int = 100):
    """``torch.load(weights_only=True)`` with every refused global replaced by an inert stand-in."""
    names = _refused_globals(path)
    for _ in range(max_globals):
        try:
            with torch.serialization.safe_globals([_opaque(n) for n in names]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            refused = re.findall(r"Unsupported global: GLOBAL (\S+)", str(e))
            if not refused or refused[0] in names:
                raise
            names.append(refused[0])
    raise pickle.UnpicklingError(f"more than {max_globals} classes pickled beside the weights")


def read_checkpoint(path):
    """What ``torch.save`` wrote to ``path`` (zip or legacy format), read with ``weights_only``:
    tensors and plain data only. Objects the releases pickle beside the weights (RevDML's training
    logger and options) come back as inert stand-ins, so no code of the file runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"released checkpoint {path} does not exist; give the path of the release's weights file")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return _load_with_stubs(path)
    except Exception as e:  # truncated zip, damaged pickle, ...: the message says which
        raise CheckpointError(f"released checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                              "give a file written by torch.save") from e


def release_state(release: Release, saved, source: str = "checkpoint") -> dict:
    """The state dict inside ``saved`` (what ``torch.load`` returned): the entry the release
    keeps it under, else ``saved`` itself if it is a dict of tensors; a ``module.`` prefix on
    every key (DistributedDataParallel, DataParallel) removed."""
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{source} holds a {type(saved).__name__}, not a dict; expected {release.describe()}")
    state = next((saved[k] for k in release.state_keys if isinstance(saved.get(k), Mapping)), saved)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source} has entries {sorted(map(str, saved))[:8]}, no state dict of tensors under "
                              f"{list(release.state_keys) or 'its top level'}; expected {release.describe()}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


# --- where the release's modules go in fgbench ------------------------------------------------------

def embedding_owner(method) -> tuple:
    """(module, state-dict prefix) of the method that holds backbone and heads: the method itself,
    or for a wrapper such as LSD the wrapped base method (``base.``)."""
    base = getattr(method, "base", None)
    return (base, "base.") if isinstance(base, nn.Module) and hasattr(base, "backbone") else (method, "")


def trunk_prefix(owner) -> str:
    """State-dict prefix, relative to ``owner``, of the backbone network a release's trunk maps to."""
    for name, module in owner.backbone.named_modules():
        inner = f"backbone.{name}." if name else "backbone."
        if isinstance(module, TorchvisionBackbone):
            return inner + "net."
        if isinstance(module, (ResNet12, SmallCNN)):
            return inner
    raise CheckpointError(f"backbone {type(owner.backbone).__name__} has no released checkpoint layout; released "
                          "checkpoints load into torchvision ResNets, ResNet-12 and small_cnn")


def kept_as_built(method) -> dict:
    """fgbench state no release has, kept as the method built it: key -> why."""
    kept = {}
    owner, owner_prefix = embedding_owner(method)
    training_only = tuple(method.training_only) + tuple(owner_prefix + p for p in owner.training_only)
    for key in method.state_dict():
        if training_only and key.startswith(training_only):
            kept[key] = "training-only state"
    for name, module in method.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Normalize):
            kept.update({prefix + "mean": "input normalisation", prefix + "std": "input normalisation"})
        elif isinstance(module, ResNet12Block):
            kept[prefix + "num_batches_tracked"] = "DropBlock ramp counter (RFS keeps a plain int)"
    loss = getattr(owner, "loss", None)
    if isinstance(loss, nn.Module):  # margins, proxies: in the loss, which the releases do not save
        kept.update({f"{owner_prefix}loss.{k}": "loss parameters" for k in loss.state_dict()})
    return kept


# --- renaming -------------------------------------------------------------------------------------

def _matches(prefix: str, key: str) -> bool:
    return prefix == "" or key == prefix or (prefix.endswith(".") and key.startswith(prefix))


def _rename(rules, key: str, trunk: str):
    for release_prefix, fgbench_prefix in rules:
        if _matches(release_prefix, key):
            return fgbench_prefix.format(trunk=trunk) + key[len(release_prefix):]
    return None


def _pick_layout(release: Release, state: dict) -> Layout:
    return next(layout for layout in release.layouts if layout.signature is None or layout.signature in state)


def _resolve_aliases(layout: Layout, state: dict, source: str) -> dict:
    """Drop the second name of every module registered twice, after checking it holds the same
    tensors as the first; a second name whose first is absent takes its place."""
    state = dict(state)
    for second, first in layout.aliases:
        for key in [k for k in state if _matches(second, k)]:
            canonical = first + key[len(second):]
            value = state.pop(key)
            if canonical not in state:
                state[canonical] = value
            elif not torch.equal(state[canonical], value):
                raise CheckpointError(f"{source}: {key} and {canonical} are the same module in the release but hold "
                                      "different values; the file is damaged or not this release")
    return state


def group_keys(keys, most: int = 16) -> list:
    """Keys grouped by prefix for messages: ``backbone.net.layer4.* (48 keys)``; a lone key as is."""
    groups = {}
    for key in keys:
        parts = key.split(".")
        stop = next((i for i, part in enumerate(parts) if part.isdigit()), len(parts) - 1)
        groups.setdefault(".".join(parts[:max(stop, 1)]), []).append(key)
    listed = [members[0] if len(members) == 1 else f"{prefix}.* ({len(members)} keys)"
              for prefix, members in groups.items()]
    return listed if len(listed) <= most else listed[:most] + [f"... {len(listed) - most} more groups"]


def _rename_state(layout: Layout, state: dict, prefix: str, trunk: str) -> tuple:
    """(fgbench key -> tensor, fgbench key -> release key, release keys no rule maps); keys a
    layout drops are left out, and a second key onto an fgbench key already filled is unmapped."""
    mapped, origin, unmapped = {}, {}, []
    for key, value in state.items():
        if any(_matches(dropped, key) for dropped, _ in layout.dropped):
            continue
        target = _rename(layout.rules, key, trunk)
        if target is None or prefix + target in mapped:
            unmapped.append(key)
            continue
        mapped[prefix + target], origin[prefix + target] = value, key
    return mapped, origin, unmapped


def _extras(layout: Layout, saved, expected: dict) -> dict:
    """fgbench key -> (tensor, entry) for state a release keeps beside its state dict."""
    found = {}
    for fgbench_key, entries in layout.extras:
        present = [e for e in entries if isinstance(saved, Mapping) and e in saved]
        if fgbench_key in expected and present:
            found[fgbench_key] = torch.as_tensor(float(saved[present[0]])), present[0]
    return found


def _shape_mismatches(mapped: dict, origin: dict, expected: dict) -> list:
    """Reshape one-element tensors to fgbench's shape (vMF's temperature is (1, 1), fgbench's a
    scalar) in place; describe every other shape that differs."""
    mismatched = []
    for key in [k for k in mapped if k in expected]:
        value, want = mapped[key], expected[key]
        if value.shape != want.shape and value.numel() == want.numel() == 1:
            mapped[key] = value = value.reshape(want.shape)
        if value.shape != want.shape:
            mismatched.append(f"{key} (release {origin[key]} {tuple(value.shape)}, fgbench {tuple(want.shape)})")
    return mismatched


def convert(release: str, saved, method, source: str = "checkpoint") -> dict:
    """The release's weights under the fgbench state-dict names of ``method``.

    ``saved`` is what ``torch.load`` returned for a release file (or its bare state dict). Returns
    the tensors that fgbench loads (keys of ``method.state_dict()``); every release key is mapped,
    dropped by name or checked as an alias, and every fgbench key outside ``kept_as_built`` gets
    one, with its shape, or ``CheckpointError`` names what does not fit.
    """
    spec = get_release(release)
    if method.name not in spec.methods:
        raise CheckpointError(f"{source}: release '{release}' loads into fgbench method {' / '.join(spec.methods)}, "
                              f"not '{method.name}'; {spec.describe()}")
    state = release_state(spec, saved, source)
    layout = _pick_layout(spec, state)
    owner, owner_prefix = embedding_owner(method)
    mapped, origin, unexpected = _rename_state(layout, _resolve_aliases(layout, state, source), owner_prefix,
                                               trunk_prefix(owner))
    expected = method.state_dict()
    for key, (value, entry) in _extras(layout, saved, expected).items():
        mapped[key], origin[key] = value, entry
    unexpected += [origin[k] for k in mapped if k not in expected]
    kept = kept_as_built(method)
    missing = [k for k in expected if k not in mapped and k not in kept]
    mismatched = _shape_mismatches(mapped, origin, expected)
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(spec, method, source, missing, unexpected, mismatched))
    return {k: v for k, v in mapped.items() if k in expected}


def _mismatch_message(spec, method, source, missing, unexpected, mismatched) -> str:
    """One line: what is missing, what is left over, which shapes differ, and the layout expected."""
    parts = [f"{source} (release '{spec.name}') does not fit fgbench method '{method.name}'"]
    if missing:
        parts.append(f"missing, no release key maps to them: {', '.join(group_keys(missing))}")
    if unexpected:
        parts.append(f"unexpected, no rule maps them: {', '.join(group_keys(unexpected))}")
    if mismatched:
        parts.append(f"shapes differ: {', '.join(mismatched[:6])}" + (" ..." if len(mismatched) > 6 else ""))
    parts.append(f"expected: {spec.describe()}; check the release name, the file, and the method's backbone and "
                 "params (embedding_dim, mlp, number of classes)")
    return "; ".join(parts)


def load_released(method, release: str, path) -> None:
    """Load the released checkpoint at ``path`` (a file of release ``release``, see ``RELEASES``)
    into the fgbench ``method``, in place; state no release has stays as built (``kept_as_built``)."""
    weights = convert(release, read_checkpoint(path), method, source=f"released checkpoint {path}")
    state = method.state_dict()
    state.update(weights)
    method.load_state_dict(state)
