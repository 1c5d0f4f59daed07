"""bitsmith export backend ``"onnx"``: compressed weights stay compressed inside the ONNX graph.

Palettized weights are stored as bit-packed indices plus LUTs and expanded by
``Gather``; INT8/INT4 weights and activations use ``DequantizeLinear`` /
``QuantizeLinear``. See :class:`OnnxBackend` and :mod:`bitsmith_export_onnx.graph`.
"""

from .backend import OnnxBackend

__all__ = ["OnnxBackend"]
