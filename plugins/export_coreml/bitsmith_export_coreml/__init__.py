"""bitsmith export backend ``"coreml"``: convert with coremltools, weights kept compressed.

Palettized weights become ``constexpr_lut_to_dense`` ops (plus ``constexpr_blockwise_shift_scale``
for per-channel scales and INT8 LUTs), INT8/INT4 weights become ``constexpr_blockwise_shift_scale``
ops, activation records become ``quantize``/``dequantize``. See :class:`CoreMLBackend`.
"""

from .backend import CoreMLBackend

__all__ = ["CoreMLBackend"]
