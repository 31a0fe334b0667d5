"""fgbench: a benchmark for learning fine-grained embeddings."""

__version__ = "0.1.0"
