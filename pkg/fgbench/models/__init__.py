"""Backbones by name: ``get_backbone(name, **params)`` returns a module with ``out_dim``."""

from .backbones import BACKBONES, get_backbone

__all__ = ["BACKBONES", "get_backbone"]
