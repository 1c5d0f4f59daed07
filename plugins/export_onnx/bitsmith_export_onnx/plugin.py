"""Registers the ``"onnx"`` export backend."""

from bitsmith import hookimpl


@hookimpl
def export_backend(register):
    """Register ``"onnx"``: compressed weights stay compressed inside the ONNX graph."""
    from .backend import OnnxBackend

    register("onnx", OnnxBackend())
