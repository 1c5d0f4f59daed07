"""Registers the ``"safetensors"`` export backend."""

from bitsmith import hookimpl


@hookimpl
def export_backend(register):
    """Register ``"safetensors"``: packed indices + LUTs + qparams in a .safetensors file."""
    from .backend import SafetensorsBackend

    register("safetensors", SafetensorsBackend())
