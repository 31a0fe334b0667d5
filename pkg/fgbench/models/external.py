"""Networks fgbench did not train, wrapped to embed like a trained method: torchvision builders,
timm models, and a user's ``package.module:function``.

An :class:`ExternalEncoder` has the one method the embed stage calls, ``embed(images, layer)``,
on batches of the dataset's images in [0, 1] (after the dataset's eval transform or support-view
augmentation, exactly as a trained method gets them). Its :class:`InputTransform` then makes them
what the network expects (grey to RGB, resize, centre crop, mean/std normalisation), and the
network runs once per batch for all requested layers:

- ``pooled``: the network's features: for torchvision, the input of its last ``nn.Linear`` (the
  classifier's input: ResNet's pooled 512/2048-d, ViT's class token); for timm,
  ``forward_head(forward_features(x), pre_logits=True)``; for a user's module or encode
  function, its output.
- any other name: the output of that named submodule (``model.get_submodule``), captured by a
  forward hook; 4-d outputs (B, C, H, W) are averaged over space, 3-d token outputs (B, N, D) over
  tokens.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .state_dicts import load_strict, read_state_dict

POOLED = "pooled"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class InputTransform(nn.Module):
    """Batches in [0, 1] -> the network's input: ``channels`` (grey repeated to RGB), the shorter
    side resized to ``resize`` (bilinear, antialiased), a centre crop of ``size``, then
    ``(x - mean) / std``. Any of them None: that step is skipped."""

    def __init__(self, *, size=None, resize=None, mean=None, std=None, channels=None):
        super().__init__()
        self.size, self.resize, self.channels = size, resize or size, channels
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def forward(self, x):
        if self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        height, width = x.shape[-2:]
        if self.resize and min(height, width) != self.resize:
            scale = self.resize / min(height, width)
            shape = (max(self.resize, round(height * scale)), max(self.resize, round(width * scale)))
            x = F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)
        if self.size:
            top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
            x = x[..., top : top + self.size, left : left + self.size]
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x


def pool_tokens(out) -> torch.Tensor:
    """A layer's output as (B, D): spatial maps averaged over space, tokens over tokens."""
    if not torch.is_tensor(out):
        raise ConfigError(f"a layer gave {type(out).__name__}, not a tensor; name a module whose output is a tensor")
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        return out.mean(dim=1)
    return out.flatten(1)


class ExternalEncoder(nn.Module):
    """``embed(images, layer)`` for a network fgbench did not train (see the module docstring).

    ``features(x)`` gives the network's pooled features; ``hooks`` are the modules (by name)
    whose outputs are the other layers. All layers of one batch come from one forward pass."""

    def __init__(self, network, transform: InputTransform, layers, features=None):
        super().__init__()
        self.network, self.transform, self.layers = network, transform, list(layers)
        self._features = features or network
        self._captured, self._last = {}, None
        module = network if isinstance(network, nn.Module) else None
        for name in self.layers:
            if name == POOLED:
                continue
            if module is None:
                raise ConfigError(f"layer '{name}' needs an nn.Module to hook; an encode function has only "
                                  f"the layer '{POOLED}' (its output)")
            try:
                sub = module.get_submodule(name)
            except AttributeError as e:
                raise ConfigError(f"the model has no module '{name}' to embed ({e}); its top-level modules: "
                                  f"{', '.join(n for n, _ in module.named_children())}") from e
            sub.register_forward_hook(self._capture(name))

    def _capture(self, name):
        def hook(module, inputs, output):
            self._captured[name] = output
        return hook

    @torch.no_grad()
    def embed(self, images, layer: str):
        if self._last is not images:  # one forward pass per batch for every layer
            self._captured = {}
            pooled = self._features(self.transform(images))
            self._captured[POOLED] = as_features(pooled, len(images))
            self._last = images
        return pool_tokens(self._captured[layer])


def as_features(out, batch: int) -> torch.Tensor:
    """An encoder's output as a float tensor (B, D); anything else is the user's error, named."""
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not torch.is_tensor(out):
        raise ConfigError(f"the model returned {type(out).__name__}; expected a tensor or array of features "
                          f"of shape (batch, dim)")
    if out.ndim < 2 or out.shape[0] != batch:
        raise ConfigError(f"the model returned features of shape {tuple(out.shape)} for a batch of {batch} "
                          f"images; expected (batch, dim)")
    return out.float()


def last_linear_input(network: nn.Module):
    """A function giving the input of ``network``'s last ``nn.Linear`` (its classifier's input):
    torchvision's pooled features, whatever the architecture names its head."""
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return network
    captured = {}
    linears[-1].register_forward_pre_hook(lambda module, args: captured.__setitem__("x", args[0]))

    def features(x):
        network(x)
        return captured.pop("x")
    return features


# --- the sources ------------------------------------------------------------------------------


def torchvision_network(entry: dict, key: str):
    """(network, pooled-features function, default transform) of a torchvision builder; weights
    from ``weights`` (an enum name, downloaded once by torchvision) or ``weights_file``."""
    import torchvision

    weights = torchvision.models.get_model_weights(entry["name"])
    chosen = weights[entry["weights"]] if entry.get("weights") else None
    network = torchvision.models.get_model(entry["name"], weights=chosen, **(entry.get("params") or {}))
    if entry.get("weights_file"):
        classifier = [n for n, m in network.named_modules() if isinstance(m, nn.Linear)][-1:]
        load_strict(network, read_state_dict(entry["weights_file"], f"{key}.weights_file"), entry["weights_file"],
                    f"{key}.weights_file", optional=tuple(f"{c}." for c in classifier))
    preset = (chosen or weights.DEFAULT).transforms()
    transform = {"size": preset.crop_size[0], "mean": list(preset.mean), "std": list(preset.std), "channels": 3}
    return network, last_linear_input(network), transform


def timm_network(entry: dict, key: str):
    """(network, pooled-features function, default transform) of a timm model with weights from
    ``checkpoint`` (timm's loader unwraps EMA and ``module.``); never downloads."""
    import timm
    from timm.models import load_state_dict

    network = timm.create_model(entry["name"], pretrained=False, **(entry.get("params") or {}))
    try:
        state = load_state_dict(entry["checkpoint"], weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise ConfigError(f"config key '{key}.checkpoint': cannot read {entry['checkpoint']} ({e})") from e
    load_strict(network, state, entry["checkpoint"], f"{key}.checkpoint")
    config = timm.data.resolve_data_config({}, model=network)
    transform = {"size": config["input_size"][-1], "mean": list(config["mean"]), "std": list(config["std"]),
                 "channels": config["input_size"][0]}

    def features(x):
        return network.forward_head(network.forward_features(x), pre_logits=True)
    return network, features, transform


def callable_network(entry: dict, key: str):
    """(network or encode function, itself, no default transform) from ``package.module:function``
    called with ``params``: an ``nn.Module`` or a function from image batches to features."""
    target = entry["function"]
    module_name, function_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the user's module failing as it loads
        raise ConfigError(f"config key '{key}.function': cannot import module '{module_name}' of '{target}' "
                          f"({type(e).__name__}: {e}); is its package installed or on PYTHONPATH?") from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"config key '{key}.function': module '{module_name}' has no function '{function_name}'")
    made = function(**(entry.get("params") or {}))
    if isinstance(made, nn.Module):
        return made, made, {}
    if callable(made) and not isinstance(made, type):
        return made, made, {}
    raise ConfigError(f"config key '{key}.function': '{target}' returned {type(made).__name__}; expected an "
                      "nn.Module or an encode function (image batch -> features)")


SOURCES = {"torchvision": torchvision_network, "timm": timm_network, "callable": callable_network}


def build_encoder(entry: dict, key: str, device) -> ExternalEncoder:
    """The encoder of a torchvision, timm or callable model entry, in eval mode on ``device``; its
    transform: the entry's ``transform`` keys over the source's defaults. The defaults resize to
    the weights' crop size without a second crop: the images come through the dataset's eval
    transform, which already crops (BREEDS: resize 256, centre crop 224)."""
    network, features, defaults = SOURCES[entry["source"]](entry, key)
    options = {**defaults, **{k: v for k, v in (entry.get("transform") or {}).items() if v is not None}}
    encoder = ExternalEncoder(network, InputTransform(**options), entry["layers"], features)
    if isinstance(network, nn.Module):
        network.to(device).eval()
    encoder.transform.to(device)
    return encoder
