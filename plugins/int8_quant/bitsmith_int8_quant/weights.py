"""Weight quantization: spec axis to tensor dim, per-tensor / per-channel / per-block scales.

Spec axes are *semantic*: ``axis=0`` is the output-channel axis and ``axis=1`` the
input-channel axis of a layer. That is the tensor's own dim for every layer except
those that store output channels on dim 1 (:func:`bitsmith.resolve.output_channel_dim`):
transposed convolutions, whose weight is ``(in, out / groups, *kernel)``, and
transformers' ``Conv1D`` (GPT-2), whose weight is ``(in, out)``. For them spec axis 0
maps to dim 1 and spec axis 1 to dim 0 (so the default per-channel spec gives one
scale per output channel, as for Conv and Linear).
With ``groups > 1`` dim 1 holds ``out / groups`` channels, and each scale serves
the matching channel of every group. The :class:`~bitsmith.compressed.QuantizedTensor`
record carries the tensor dim (its ``spec.granularity.axis`` is rewritten to it),
so backends and :mod:`bitsmith.sizes` never need to know the layer type.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
import torch
from torch import nn

from bitsmith.compressed import QuantizedTensor
from bitsmith.config.specs import PerBlockGranularity, PerChannelGranularity, QuantizationSpec
from bitsmith.errors import CompressionError
from bitsmith.resolve import output_channel_dim

from .affine import qparams, quantize

def tensor_axis(module: nn.Module, spec_axis: int) -> int:
    """The weight dim that spec axis ``spec_axis`` (0: output channels, 1: input channels) refers to."""
    if output_channel_dim(module) == 1 and spec_axis in (0, 1):
        return 1 - spec_axis
    return spec_axis


def tensor_spec(module: nn.Module, spec: QuantizationSpec) -> QuantizationSpec:
    """``spec`` with its granularity axis rewritten to the weight dim of ``module`` (see module doc)."""
    gran = spec.granularity
    if isinstance(gran, (PerChannelGranularity, PerBlockGranularity)):
        axis = tensor_axis(module, gran.axis)
        if axis != gran.axis:
            return attrs.evolve(spec, granularity=attrs.evolve(gran, axis=axis))
    return spec


def check_weight(shape: tuple[int, ...], spec: QuantizationSpec, name: str) -> None:
    """Raise :class:`CompressionError` naming ``name`` when ``spec`` (tensor axes) cannot apply to ``shape``."""
    gran = spec.granularity
    if isinstance(gran, (PerChannelGranularity, PerBlockGranularity)):
        if len(shape) <= gran.axis:
            raise CompressionError(f"{name}: a {len(shape)}-D tensor {tuple(shape)} has no axis {gran.axis} "
                                   f"for {type(gran).__name__}; use axis 0 or per_tensor")
    if isinstance(gran, PerBlockGranularity):
        along = shape[gran.axis]
        if along % gran.block_size:
            sizes = [d for d in range(1, along + 1) if along % d == 0 and d <= 256]
            raise CompressionError(f"{name}: {along} elements along axis {gran.axis} are not divisible by "
                                   f"block_size {gran.block_size}; block sizes that divide it: "
                                   f"{', '.join(map(str, sizes))}")


def _observe_layout(weight: torch.Tensor, spec: QuantizationSpec) -> tuple[torch.Tensor, tuple[int, ...], list[int]]:
    """(tensor to observe, reduce dims, scale shape) for a weight under ``spec`` (tensor axes)."""
    shape = list(weight.shape)
    gran = spec.granularity
    if isinstance(gran, PerChannelGranularity):
        scale_shape = [1] * len(shape)
        scale_shape[gran.axis] = shape[gran.axis]
        return weight, tuple(d for d in range(len(shape)) if d != gran.axis), scale_shape
    if isinstance(gran, PerBlockGranularity):
        a, bs = gran.axis, gran.block_size
        blocked = weight.reshape(*shape[:a], shape[a] // bs, bs, *shape[a + 1:])
        scale_shape = shape[:a] + [shape[a] // bs] + shape[a + 1:]
        return blocked, (a + 1,), scale_shape
    return weight, tuple(range(len(shape))), [1] * len(shape)


def quantize_weight(weight: torch.Tensor, spec: QuantizationSpec, observer_factory: Callable[[], Any], *,
                    name: str = "weight") -> QuantizedTensor:
    """Quantize ``weight`` with ``spec`` (axes already in tensor dims, see :func:`tensor_spec`).

    The range comes from a fresh observer of ``observer_factory`` that sees the
    weight once. Returns the record; ``record.dequantize()`` is the fake-quantized weight.
    """
    shape = tuple(weight.shape)
    check_weight(shape, spec, name)
    w = weight.detach().to(device="cpu", dtype=torch.float32)
    observed, reduce_dims, scale_shape = _observe_layout(w, spec)
    observer = observer_factory()
    observer.observe(observed, reduce_dims)
    lo, hi = observer.bounds()
    count = 1
    for s in scale_shape:
        count *= s
    if lo.numel() != count or hi.numel() != count:
        raise CompressionError(f"{name}: observer {spec.observer!r} returned bounds with {lo.numel()} entries, "
                               f"expected {count} for {type(spec.granularity).__name__}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise CompressionError(f"{name}: weight has non-finite values; cannot quantize")
    scale, zero_point = qparams(lo.reshape(scale_shape), hi.reshape(scale_shape), spec)
    zp_full = None if zero_point is None else _expand(zero_point, shape)
    int_data = quantize(w, _expand(scale, shape), zp_full, spec)
    return QuantizedTensor(int_data=int_data, scale=scale, zero_point=zero_point, spec=spec, shape=shape,
                           dtype=weight.dtype)


def _expand(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    for dim, (full, part) in enumerate(zip(shape, t.shape)):
        if part not in (1, full):
            t = t.repeat_interleave(full // part, dim=dim)
    return t
