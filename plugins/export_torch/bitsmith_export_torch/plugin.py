"""Registers the ``"torch"`` export backend."""

from bitsmith import hookimpl


@hookimpl
def export_backend(register):
    """Register ``"torch"``: dense dequantized weights, records dropped."""
    from .backend import TorchBackend

    register("torch", TorchBackend())
