"""Size and bits-per-weight accounting: the one place sizes are computed.

A palettized tensor of N weights costs ``N / cluster_dim * n_bits`` index bits plus
its LUTs: ``num_luts * 2**n_bits * cluster_dim`` entries at the weight's dtype, or at
the ``lut_qspec`` dtype plus one scale (weight dtype) and, when asymmetric, one zero
point (LUT dtype) per LUT; plus one weight-dtype scale per output channel when
``enable_per_channel_scale``; plus, for sparse outliers kept exact (dense-and-sparse),
one weight-dtype value and one 32-bit position per outlier. A quantized tensor costs ``N * dtype bits`` plus its
scales (weight dtype) and zero points (quantized dtype). An uncompressed tensor
costs ``N * dtype bits``. Sizes print in KiB/MiB (1024-based).

Check: a 9408-weight fp32 conv at 2/4/6-bit per-tensor costs 2.31/4.66/7.14 KiB.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Union

import attrs
import torch
from attrs import define
from torch import nn

from .compressed import ActivationQuant, PalettizedTensor, QuantizedTensor, iter_records
from .config.specs import (
    PalettizationSpec,
    PerBlockGranularity,
    PerChannelGranularity,
    PerGroupedChannelGranularity,
    QuantizationScheme,
    QuantizationSpec,
)

Spec = Union[PalettizationSpec, QuantizationSpec, None]


@define(frozen=True)
class TensorSize:
    """Bits of one tensor: ``payload_bits`` (indices / integers / dense values) + ``overhead_bits`` (LUTs, scales)."""

    numel: int
    payload_bits: int
    overhead_bits: int = 0

    @property
    def total_bits(self) -> int:
        """All bits: payload plus overhead."""
        return self.payload_bits + self.overhead_bits

    @property
    def bytes(self) -> float:
        """Total size in bytes."""
        return self.total_bits / 8

    @property
    def kib(self) -> float:
        """Total size in KiB."""
        return self.total_bits / 8 / 1024

    @property
    def bpw_index(self) -> float:
        """Payload bits per weight (index-only BPW for palettized tensors)."""
        return self.payload_bits / self.numel if self.numel else 0.0

    @property
    def bpw(self) -> float:
        """All-in bits per weight."""
        return self.total_bits / self.numel if self.numel else 0.0

    def __add__(self, other: "TensorSize") -> "TensorSize":
        return TensorSize(self.numel + other.numel, self.payload_bits + other.payload_bits,
                          self.overhead_bits + other.overhead_bits)


ZERO = TensorSize(0, 0, 0)


def dtype_bits(dtype: torch.dtype) -> int:
    """Storage bits of one element of a torch dtype."""
    if dtype.is_floating_point:
        return torch.finfo(dtype).bits
    if dtype == torch.bool:
        return 8
    return torch.iinfo(dtype).bits


def dense_size(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> TensorSize:
    """An uncompressed tensor."""
    n = math.prod(shape)
    return TensorSize(n, n * dtype_bits(dtype))


def _num_luts(shape: Sequence[int], spec: PalettizationSpec) -> int:
    gran = spec.granularity
    if isinstance(gran, PerGroupedChannelGranularity):
        return max(1, shape[gran.axis] // gran.group_size)
    return 1


def palettized_size(shape: Sequence[int], spec: PalettizationSpec, dtype: torch.dtype = torch.float32) -> TensorSize:
    """A tensor palettized with ``spec`` (computed from the spec, before any clustering)."""
    n = math.prod(shape)
    wbits = dtype_bits(dtype)
    luts = _num_luts(shape, spec)
    entries = luts * spec.n_clusters * spec.cluster_dim
    if spec.lut_qspec is None:
        lut_bits = entries * wbits
    else:
        q = spec.lut_qspec
        lut_bits = entries * q.n_bits + luts * wbits
        if q.qscheme is QuantizationScheme.ASYMMETRIC:
            lut_bits += luts * q.n_bits
    scale_bits = shape[0] * wbits if spec.enable_per_channel_scale else 0
    index_bits = (n // spec.cluster_dim) * spec.n_bits
    return TensorSize(n, index_bits, lut_bits + scale_bits)


def quant_scale_count(shape: Sequence[int], spec: QuantizationSpec) -> int:
    """Number of scales a weight of ``shape`` needs under ``spec``."""
    gran = spec.granularity
    if isinstance(gran, PerChannelGranularity):
        return shape[gran.axis] if len(shape) > gran.axis else 1
    if isinstance(gran, PerBlockGranularity):
        n = math.prod(shape)
        along = shape[gran.axis] if len(shape) > gran.axis else 1
        return n // along * math.ceil(along / gran.block_size)
    return 1


def quantized_size(shape: Sequence[int], spec: QuantizationSpec, dtype: torch.dtype = torch.float32) -> TensorSize:
    """A tensor quantized with ``spec``: integers + scales (+ zero points when asymmetric)."""
    n = math.prod(shape)
    scales = quant_scale_count(shape, spec)
    overhead = scales * dtype_bits(dtype)
    if spec.qscheme is QuantizationScheme.ASYMMETRIC:
        overhead += scales * spec.n_bits
    return TensorSize(n, n * spec.n_bits, overhead)


def spec_size(shape: Sequence[int], spec: Spec, dtype: torch.dtype = torch.float32) -> TensorSize:
    """Size of a tensor under any spec (``None``: uncompressed)."""
    if spec is None:
        return dense_size(shape, dtype)
    if isinstance(spec, PalettizationSpec):
        return palettized_size(shape, spec, dtype)
    if isinstance(spec, QuantizationSpec):
        return quantized_size(shape, spec, dtype)
    raise TypeError(f"not a spec: {spec!r}")


OUTLIER_POSITION_BITS = 32
"""Bits stored per sparse-outlier position (plus one weight-dtype value per outlier)."""


def outliers_size(nnz: int, dtype: torch.dtype = torch.float32) -> TensorSize:
    """Overhead of ``nnz`` sparse outliers kept exact next to a palettized tensor (no payload)."""
    return TensorSize(0, 0, nnz * (dtype_bits(dtype) + OUTLIER_POSITION_BITS))


def record_size(record: Union[PalettizedTensor, QuantizedTensor]) -> TensorSize:
    """Size of a compressed tensor from its record.

    Equals :func:`spec_size` of its spec, plus :func:`outliers_size` when a
    palettized record carries sparse outliers.
    """
    if isinstance(record, PalettizedTensor):
        size = palettized_size(record.shape, record.spec, record.dtype)
        if record.outliers is not None and record.outliers.nnz:
            size = size + outliers_size(record.outliers.nnz, record.dtype)
        return size
    if isinstance(record, QuantizedTensor):
        n = math.prod(record.shape)
        scales = record.scale.numel()
        overhead = scales * dtype_bits(record.dtype)
        if record.zero_point is not None:
            overhead += scales * record.spec.n_bits
        return TensorSize(n, n * record.spec.n_bits, overhead)
    raise TypeError(f"not a weight record: {record!r}")


@define(frozen=True)
class ModelSize:
    """Sizes of a model: its compressed tensors, its other tensors, and the totals.

    ``compressed`` sums the tensors that carry a record (once per shared tensor);
    ``uncompressed`` everything else (biases, norms, uncompressed layers, activation qparams).
    ``bpw``/``bpw_index`` are over the compressed tensors only: the figure users
    compare with ``n_bits``.
    """

    compressed: TensorSize
    uncompressed: TensorSize

    @property
    def total(self) -> TensorSize:
        """Everything."""
        return self.compressed + self.uncompressed

    @property
    def mib(self) -> float:
        """Total size in MiB."""
        return self.total.total_bits / 8 / 2**20

    @property
    def bpw(self) -> float:
        """All-in bits per compressed weight (indices + LUTs + scales)."""
        return self.compressed.bpw

    @property
    def bpw_index(self) -> float:
        """Index/integer bits per compressed weight."""
        return self.compressed.bpw_index


def model_size(model: nn.Module, *, dtype: Optional[torch.dtype] = None) -> ModelSize:
    """Sizes of ``model`` from its attached records; shared tensors count once.

    ``dtype`` prices uncompressed tensors at another dtype (e.g. ``torch.float16``
    for an fp16 deployment baseline); by default each tensor's own dtype is used.
    A record shared by several modules (tied weights) counts once. Activation
    quantization parameters (scale, zero point) count in ``uncompressed`` at their own
    dtype. Tensors that a
    record stores (its LUT, indices, scales, ...) are part of the record's size, so an
    export backend that keeps them as module buffers does not count them twice.
    """
    compressed, activations = ZERO, ZERO
    seen: set[int] = set()
    counted: set[int] = set()
    for _, module, name, record in iter_records(model):
        tensors = [t for t in record_tensors(record) if id(t) not in seen]
        seen.update(id(t) for t in tensors)
        if isinstance(record, ActivationQuant):
            for t in tensors:  # its scale and zero point: stored next to the weights, priced like other tensors
                activations = activations + dense_size(t.shape, t.dtype)
            continue
        tensor = module._parameters.get(name, module._buffers.get(name))  # a stored tensor, never a computed one
        keys = {id(record)} if tensor is None else {id(record), id(tensor)}
        if keys & counted:
            continue
        counted |= keys
        if tensor is not None:
            seen.add(id(tensor))
        compressed = compressed + record_size(record)
    uncompressed = activations
    for tensor in _unique_tensors(model):
        if id(tensor) not in seen:
            uncompressed = uncompressed + dense_size(tensor.shape, dtype or tensor.dtype)
    return ModelSize(compressed, uncompressed)


def record_tensors(record: object) -> Iterable[torch.Tensor]:
    """Every tensor a record holds (LUTs, indices, scales, zero points, outliers)."""
    stack = [record]
    while stack:
        obj = stack.pop()
        for field in attrs.fields(type(obj)):  # type: ignore[arg-type]  # records are attrs classes
            value = getattr(obj, field.name)
            if isinstance(value, torch.Tensor):
                yield value
            elif attrs.has(type(value)):
                stack.append(value)


def _unique_tensors(model: nn.Module) -> Iterable[torch.Tensor]:
    seen = set()
    for tensor in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            yield tensor


def format_kib(bits: float) -> str:
    """``bits`` as KiB with two decimals, e.g. ``4.66``."""
    return f"{bits / 8 / 1024:.2f}"


def format_mib(bits: float) -> str:
    """``bits`` as MiB with two decimals."""
    return f"{bits / 8 / 2**20:.2f}"
