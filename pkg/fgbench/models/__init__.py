"""Backbones by name: ``get_backbone(name, **params)`` returns a module with ``out_dim``."""

from .backbones import BACKBONES, Normalize, check_backbone, get_backbone, list_backbones

__all__ = ["BACKBONES", "Normalize", "check_backbone", "get_backbone", "list_backbones"]
