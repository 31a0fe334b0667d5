"""Reading saved state dicts into fgbench's networks, strictly, with one message for a mismatch:
the backbones' ``weights_file``, and the ``models:`` section's torchvision and timm files."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from ..errors import ConfigError


def _groups(keys) -> str:
    """Keys grouped by their first component: ``layer4 (30), fc (2)``."""
    counts = Counter(k.split(".", 1)[0] for k in keys)
    return ", ".join(f"{prefix} ({n})" for prefix, n in counts.items())


def _prefix_hint(loaded, expected) -> str:
    """When every loaded key carries one extra leading component (DDP's ``module.``, MoCo's
    ``encoder_q.``) that, dropped, gives the expected keys: say so."""
    firsts = {k.split(".", 1)[0] for k in loaded}
    if len(firsts) == 1 and all("." in k for k in loaded):
        stripped = {k.split(".", 1)[1] for k in loaded}
        if len(stripped & set(expected)) >= len(expected) // 2:
            return f"; the file's keys carry the prefix '{firsts.pop()}.': save the state dict without it"
    return ""


def mismatch_message(path, missing, unexpected, expected, loaded, shapes=()) -> str:
    """Missing and unexpected keys grouped by prefix, the expected layout, and a hint when only a
    leading prefix differs (the released checkpoints' key maps: fgbench.models.released)."""
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s): {_groups(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {_groups(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): " + ", ".join(shapes[:3]))
    return (f"{path} does not fit the model: {'; '.join(parts)}. Expected layout: {_groups(expected)}"
            + _prefix_hint(loaded, expected))


def read_state_dict(path, key: str) -> dict:
    """A saved state dict (a plain dict of tensors, or one under 'state_dict' / 'model')."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise ConfigError(f"config key '{key}': cannot read {path} as a torch state dict ({e})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"config key '{key}': {path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def load_strict(network: nn.Module, state: dict, path, key: str, optional=()) -> None:
    """Load ``state`` into ``network``: every key must match in name and shape, except that keys
    under a prefix in ``optional`` (an unused classifier) may be absent. A mismatch is one
    ``ConfigError``: missing and unexpected keys grouped by prefix, and the expected layout."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(tuple(optional))]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ConfigError(f"config key '{key}': " + mismatch_message(path, missing, unexpected, list(expected), list(state), shapes))
    network.load_state_dict(state, strict=False)
