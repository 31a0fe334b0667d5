"""Backbones by name: ``get_backbone(name, **params)`` returns a module with ``out_dim``."""

from .backbones import BACKBONES, Normalize, get_backbone

__all__ = ["BACKBONES", "Normalize", "get_backbone"]
