"""Palettize one tensor with any registered clusterer: granularity, vectors, scales, LUT quantization.

The clusterer only sees rows of a 2-D matrix; everything about layouts lives here,
so every algorithm (kmeans, sensitive_kmeans, third-party) produces the same
:class:`~bitsmith.compressed.PalettizedTensor` and gets every export backend for free.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..compressed import LutQuantization, PalettizedTensor
from ..config.specs import PalettizationSpec, PerGroupedChannelGranularity, QuantizationScheme, QuantizationSpec
from ..errors import CompressionError
from ..protocols import Clusterer


def layout_axis(spec: PalettizationSpec) -> int:
    """Axis along which LUT groups and vectors run (0 for per-tensor)."""
    gran = spec.granularity
    return gran.axis if isinstance(gran, PerGroupedChannelGranularity) else 0


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN or infinity: its min and max (NaN propagates), no boolean copy of ``t``.

    CPU tensors numpy can read are reduced by numpy, on the calling thread (a torch
    reduction waits on an OpenMP team, slow on a busy machine); others by ``aminmax``.
    """
    if t.numel() == 0:
        return True
    t = t.detach()
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.float16):
        a = t.numpy()
        return bool(np.isfinite(a.min()) and np.isfinite(a.max()))
    lo, hi = t.aminmax()
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_palettizable(shape: Sequence[int], spec: PalettizationSpec, name: str) -> None:
    """Raise :class:`CompressionError` naming ``name`` if ``spec`` cannot apply to a tensor of ``shape``."""
    axis = layout_axis(spec)
    if len(shape) <= axis:
        raise CompressionError(f"{name}: a {len(shape)}-D tensor {tuple(shape)} has no axis {axis} for {spec.describe()}")
    channels = shape[axis]
    gran = spec.granularity
    if isinstance(gran, PerGroupedChannelGranularity) and channels % gran.group_size:
        divisors = [d for d in range(1, channels + 1) if channels % d == 0 and d <= 64]
        raise CompressionError(
            f"{name}: {channels} channels along axis {axis} are not divisible by group_size "
            f"{gran.group_size}; group sizes that divide it: {', '.join(map(str, divisors))}"
        )
    if channels % spec.cluster_dim:
        raise CompressionError(
            f"{name}: cluster_dim {spec.cluster_dim} does not divide the {channels} channels along axis {axis}"
        )


def palettize_tensor(weight: torch.Tensor, spec: PalettizationSpec, clusterer: Clusterer, *,
                     sample_weight: Optional[torch.Tensor] = None, seed: Optional[int] = None,
                     name: str = "tensor") -> PalettizedTensor:
    """Palettize ``weight`` under ``spec`` using ``clusterer`` for each LUT.

    ``sample_weight`` (same shape as ``weight``) weights each element's squared
    error (a vector's weight is the sum over its entries).
    """
    shape = tuple(weight.shape)
    check_palettizable(shape, spec, name)
    axis, d, k = layout_axis(spec), spec.cluster_dim, spec.n_clusters
    w = weight.detach().to(device="cpu", dtype=torch.float32)
    if not all_finite(w):
        raise CompressionError(f"{name}: has NaN or infinite values; cannot palettize it")
    scale = None
    if spec.enable_per_channel_scale:
        scale = w.reshape(shape[0], -1).abs().amax(dim=1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        w = w / scale.reshape(-1, *([1] * (w.dim() - 1)))
    vectors = _to_vectors(w, axis, d)  # (C/d, R, d)
    sw = None if sample_weight is None else _to_vectors(
        sample_weight.detach().to(device="cpu", dtype=torch.float32).reshape(shape), axis, d).sum(-1)
    channels = shape[axis]
    group = spec.granularity.group_size if isinstance(spec.granularity, PerGroupedChannelGranularity) else channels
    rows = group // d
    luts = []
    idx = torch.empty(channels // d, math.prod(_rest_shape(shape, axis)), dtype=torch.uint8)  # k <= 256
    for g in range(channels // group):
        x = vectors[g * rows:(g + 1) * rows].reshape(-1, d)
        xw = None if sw is None else sw[g * rows:(g + 1) * rows].reshape(-1)
        centroids, labels = clusterer(x, k, sample_weight=xw, seed=seed)
        centroids = torch.as_tensor(centroids, dtype=torch.float32).reshape(-1, d)
        labels = torch.as_tensor(labels).reshape(-1)
        if centroids.shape[0] > k or labels.numel() != x.shape[0]:
            raise CompressionError(f"{name}: clusterer returned {centroids.shape[0]} centroids / "
                                   f"{labels.numel()} labels for k={k}, {x.shape[0]} rows")
        if centroids.shape[0] < k:  # fewer distinct values than LUT entries: pad, never index the padding
            pad = centroids[-1:].expand(k - centroids.shape[0], d)
            centroids = torch.cat([centroids, pad])
        luts.append(centroids)
        idx.numpy()[g * rows:(g + 1) * rows] = labels.reshape(rows, -1).numpy()  # numpy: no OpenMP team
        del labels
    lut = torch.stack(luts)  # (G, k, d)
    idx = idx.reshape(channels // d, *_rest_shape(shape, axis)).movedim(0, axis)
    lut_quant = None
    if spec.lut_qspec is not None:
        lut, lut_quant = quantize_lut(lut, spec.lut_qspec)
    return PalettizedTensor(lut=lut, indices=idx.to(torch.uint8).contiguous(), spec=spec, shape=shape,
                            dtype=weight.dtype, axis=axis, per_channel_scale=scale, lut_quant=lut_quant)


def _rest_shape(shape: Sequence[int], axis: int) -> list[int]:
    return [s for i, s in enumerate(shape) if i != axis]


def _to_vectors(w: torch.Tensor, axis: int, d: int) -> torch.Tensor:
    moved = w.movedim(axis, 0)
    channels = moved.shape[0]
    rest = math.prod(moved.shape[1:])
    return moved.reshape(channels // d, d, rest).permute(0, 2, 1)


def quantize_lut(lut: torch.Tensor, qspec: QuantizationSpec) -> tuple[torch.Tensor, LutQuantization]:
    """Round LUT values to ``qspec.dtype`` with one scale (and zero point) per LUT.

    Returns the dequantized LUT actually used and the stored integer/float8 form.
    """
    flat = lut.reshape(lut.shape[0], -1)
    lo, hi = qspec.quant_range
    tiny = torch.finfo(torch.float32).tiny
    if qspec.is_float8:
        fdtype = getattr(torch, qspec.dtype_name)
        scale = (flat.abs().amax(1) / hi).clamp_min(tiny)
        stored = (flat / scale[:, None]).to(fdtype)
        deq = stored.float() * scale[:, None]
        return deq.reshape(lut.shape), LutQuantization(stored.reshape(lut.shape), scale, None, qspec)
    if qspec.qscheme is QuantizationScheme.SYMMETRIC:
        half = (hi - lo) // 2  # 127 for int8 and for uint8 (zero point 128)
        zp_value = 0 if lo < 0 else (hi + 1) // 2
        scale = (flat.abs().amax(1) / half).clamp_min(tiny)
        zero_point = torch.full_like(scale, zp_value)
    else:
        mn = flat.amin(1).clamp_max(0)
        mx = flat.amax(1).clamp_min(0)
        scale = ((mx - mn) / (hi - lo)).clamp_min(tiny)
        zero_point = torch.clamp(torch.round(lo - mn / scale), lo, hi)
    q = torch.clamp(torch.round(flat / scale[:, None]) + zero_point[:, None], lo, hi)
    deq = (q - zero_point[:, None]) * scale[:, None]
    int_dtype = torch.int8 if lo < 0 else torch.uint8
    stored_zp = None if qspec.qscheme is QuantizationScheme.SYMMETRIC and lo < 0 else zero_point.to(int_dtype)
    return deq.reshape(lut.shape), LutQuantization(q.to(int_dtype).reshape(lut.shape), scale, stored_zp, qspec)
