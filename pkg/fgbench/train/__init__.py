"""Training: the loop, checkpoints and resume (multi-process DDP through fgbench.distributed)."""

from .loop import build_model, load_model, train

__all__ = ["build_model", "load_model", "train"]
