"""Registers the ``"coreml"`` export backend (coremltools is imported only when a model is converted)."""

from bitsmith import hookimpl


@hookimpl
def export_backend(register):
    """Register ``"coreml"``: Core ML mlprogram with constexpr LUT / dequantize weight ops."""
    from .backend import CoreMLBackend

    register("coreml", CoreMLBackend())
