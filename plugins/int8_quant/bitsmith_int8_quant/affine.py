"""Affine integer quantization math: ranges to scales/zero points, quantize, dequantize.

``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and
``x_hat = (q - zero_point) * scale``, with ``(qmin, qmax)`` the spec dtype's range
(int8 -128..127, uint8 0..255, int4 -8..7, uint4 0..15). For any ``x`` between
``(qmin - zero_point) * scale`` and ``(qmax - zero_point) * scale`` the error
``|x - x_hat|`` is at most ``scale / 2``.

Scales from an observed range ``[lo, hi]`` (widened to contain 0, so zero is exact):

- symmetric: ``scale = max(|lo|, |hi|) / ((qmax - qmin) // 2)`` (127 for int8/uint8,
  7 for int4/uint4); zero point 0 for signed dtypes (stored as ``None``), the middle
  of the range (128, 8) for unsigned ones. int8 never uses -128, so the grid is
  symmetric around zero.
- asymmetric: ``scale = (hi - lo) / (qmax - qmin)``,
  ``zero_point = clamp(round(qmin - lo / scale), qmin, qmax)``.

Scales are clamped to at least float32 epsilon, so an all-zero range quantizes to
exact zeros instead of dividing by zero.
"""

from __future__ import annotations

from typing import Optional

import torch

from bitsmith.config.specs import QuantizationScheme, QuantizationSpec

MIN_SCALE = float(torch.finfo(torch.float32).eps)
"""Smallest scale ever produced (an all-zero range gets this scale and quantizes to 0)."""


def storage_dtype(spec: QuantizationSpec) -> torch.dtype:
    """Integer dtype that holds the quantized values: int8 for int8/int4, uint8 for uint8/uint4."""
    return torch.int8 if spec.quant_range[0] < 0 else torch.uint8


def has_zero_point(spec: QuantizationSpec) -> bool:
    """True when the zero point is stored: asymmetric schemes and unsigned symmetric ones."""
    return spec.qscheme is QuantizationScheme.ASYMMETRIC or spec.quant_range[0] >= 0


def qparams(lo: torch.Tensor, hi: torch.Tensor, spec: QuantizationSpec) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Scale and zero point (``None`` for signed symmetric) for observed bounds ``lo``/``hi``.

    ``lo`` and ``hi`` have the same shape (one entry per scale); the results have it too.
    """
    if spec.is_float8:
        raise ValueError(f"dtype: {spec.dtype_name} is not an integer dtype; the int8 quantizer handles "
                         "int8, uint8, int4, uint4")
    qmin, qmax = spec.quant_range
    lo = torch.as_tensor(lo, dtype=torch.float32).clamp_max(0.0)
    hi = torch.as_tensor(hi, dtype=torch.float32).clamp_min(0.0)
    if spec.qscheme is QuantizationScheme.SYMMETRIC:
        half = (qmax - qmin) // 2
        scale = (torch.maximum(-lo, hi) / half).clamp_min(MIN_SCALE)
        if qmin < 0:
            return scale, None
        return scale, torch.full_like(scale, (qmax + 1) // 2).to(torch.uint8)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(MIN_SCALE)
    zero_point = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    return scale, zero_point.to(storage_dtype(spec))


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor],
             spec: QuantizationSpec) -> torch.Tensor:
    """Integers of ``x`` (at :func:`storage_dtype`); ``scale``/``zero_point`` broadcast against ``x``."""
    qmin, qmax = spec.quant_range
    q = torch.round(x.float() / scale)
    if zero_point is not None:
        q = q + zero_point.float()
    return torch.clamp(q, qmin, qmax).to(storage_dtype(spec))


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
    """Real values of integers ``q``: ``(q - zero_point) * scale`` (float32)."""
    values = q.float()
    if zero_point is not None:
        values = values - zero_point.float()
    return values * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor],
                  spec: QuantizationSpec) -> torch.Tensor:
    """``dequantize(quantize(x))`` at ``x``'s dtype."""
    return dequantize(quantize(x, scale, zero_point, spec), scale, zero_point).to(x.dtype)


def representable_range(scale: torch.Tensor, zero_point: Optional[torch.Tensor],
                        spec: QuantizationSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest real value the grid holds: ``((qmin - zp) * scale, (qmax - zp) * scale)``."""
    qmin, qmax = spec.quant_range
    zp = torch.zeros_like(scale) if zero_point is None else zero_point.float()
    return (qmin - zp) * scale, (qmax - zp) * scale
