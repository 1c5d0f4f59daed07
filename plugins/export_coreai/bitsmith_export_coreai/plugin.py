"""Registers the ``"coreai"`` export backend."""

from bitsmith import hookimpl


@hookimpl
def export_backend(register):
    """Register ``"coreai"``: LUT/int buffers for compressed weights, Q/DQ pairs for activations."""
    from .backend import CoreAIBackend

    register("coreai", CoreAIBackend())
