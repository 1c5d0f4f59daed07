"""bitsmith: compress PyTorch models for phones."""

__version__ = "0.1.0"
