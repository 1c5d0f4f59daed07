"""The compressed-weight representation shared by every algorithm and backend.

Algorithms (kmeans, sensitive_kmeans, dkm, int8, ...) describe each compressed
tensor with a record: :class:`PalettizedTensor` (LUTs + indices + optional
per-channel scales and LUT quantization) or :class:`QuantizedTensor` (integers +
scales/zero points), and activation ranges with :class:`ActivationQuant`. Records are
attached to the module that owns the tensor (:func:`attach`); the module's parameter
keeps the dense, dequantized values so the model runs in eager PyTorch. Export
backends read the records (:func:`iter_records`) and never need to know which
algorithm produced them; sizes come from the records too (:mod:`bitsmith.sizes`).
Records are model state: ``state_dict()`` carries them and ``load_state_dict()``
rebuilds them (:mod:`bitsmith.state`), so saving, loading and copying keep them.

Index layout of a palettized tensor with ``cluster_dim`` ``d`` along ``axis``:
``indices`` has the weight's shape with ``shape[axis]`` divided by ``d``; entry
``i`` along ``axis`` selects the LUT row that fills weights ``i*d … i*d+d-1``. LUT
``g`` serves channels ``g*group_size … (g+1)*group_size-1`` along ``axis``
(one LUT for per-tensor).
"""

from __future__ import annotations

from typing import Iterator, Optional, Union

import numpy as np
import torch
from attrs import define
from torch import nn

from .config.specs import PalettizationSpec, QuantizationSpec

_ATTR = "_bitsmith_records"
_DEQUANTIZE_CHUNK = 1 << 22  # elements per step of PalettizedTensor.dequantize


@define(frozen=True, eq=False)
class LutQuantization:
    """How LUT values are stored when ``lut_qspec`` is set: ``lut = (int_lut - zero_point) * scale``.

    ``int_lut`` has the LUT's shape at the storage dtype (int8/uint8/float8);
    ``scale``/``zero_point`` hold one value per LUT, shape ``(num_luts,)``;
    ``zero_point`` is None for symmetric schemes.
    """

    int_lut: torch.Tensor
    scale: torch.Tensor
    zero_point: Optional[torch.Tensor]
    spec: QuantizationSpec


@define(frozen=True, eq=False)
class SparseOutliers:
    """Weights kept exact next to a palettized tensor (dense-and-sparse, as in SqueezeLLM).

    ``indices``: int64 (nnz,), sorted positions in the row-major flattened tensor;
    ``values``: (nnz,) at the weight's dtype. The dense tensor is the palettized one
    with ``dense.view(-1)[indices] = values``. Stored cost: one value plus one 32-bit
    position per outlier (:func:`bitsmith.sizes.record_size`).
    """

    indices: torch.Tensor
    values: torch.Tensor

    @property
    def nnz(self) -> int:
        """Number of weights kept exact."""
        return int(self.indices.numel())


@define(frozen=True, eq=False)
class PalettizedTensor:
    """A tensor stored as LUT indices.

    ``lut``: (num_luts, 2**n_bits, cluster_dim) float32, the values actually used
    (already rounded through ``lut_quant`` when present). ``indices``: uint8, layout
    in the module docstring. ``per_channel_scale``: (shape[0],) float32 or None;
    the dense tensor is ``lut[...] * scale`` broadcast along axis 0. ``outliers``:
    optional :class:`SparseOutliers` written over the dense tensor last.
    """

    lut: torch.Tensor
    indices: torch.Tensor
    spec: PalettizationSpec
    shape: tuple[int, ...]
    dtype: torch.dtype
    axis: int = 0
    per_channel_scale: Optional[torch.Tensor] = None
    lut_quant: Optional[LutQuantization] = None
    outliers: Optional[SparseOutliers] = None

    @property
    def n_bits(self) -> int:
        """Bits per index."""
        return self.spec.n_bits

    @property
    def cluster_dim(self) -> int:
        """LUT row length."""
        return self.spec.cluster_dim

    @property
    def num_luts(self) -> int:
        """Number of LUTs (1 for per-tensor)."""
        return int(self.lut.shape[0])

    @property
    def group_size(self) -> int:
        """Channels along ``axis`` served by one LUT."""
        return self.shape[self.axis] // self.num_luts

    def dequantize(self) -> torch.Tensor:
        """The dense tensor at the original dtype (contiguous).

        Built in chunks of about ``_DEQUANTIZE_CHUNK`` elements (LUT lookups into a
        float32 chunk, then scale and cast once per chunk), so temporaries stay small
        whatever the tensor's size.
        """
        d, axis = self.cluster_dim, self.axis
        idx = self.indices.movedim(axis, 0)  # (C/d, *rest), uint8
        rows, rest = idx.shape[0], tuple(idx.shape[1:])
        flat = idx.reshape(rows, -1)
        out = torch.empty(rows, d, *rest, dtype=self.dtype, device=self.lut.device)
        scale = self.per_channel_scale
        rows_per_lut = self.group_size // d
        step = max(1, _DEQUANTIZE_CHUNK // max(1, flat.shape[1] * d))
        staged = out.dtype != self.lut.dtype  # look up in the LUT's dtype, cast once per chunk
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            chunk = torch.empty(stop - start, d, *rest, dtype=self.lut.dtype, device=self.lut.device) if staged \
                else out[start:stop]
            row = start
            while row < stop:  # one lookup per LUT the chunk touches
                end = min(stop, (row // rows_per_lut + 1) * rows_per_lut)
                _lookup(self.lut[row // rows_per_lut], flat[row:end], chunk[row - start:end - start])
                row = end
            if scale is not None:  # scales run along the weight's dim 0
                chunk.mul_(scale[start * d:stop * d].reshape(stop - start, d, *([1] * len(rest))) if axis == 0
                           else scale.reshape(1, 1, -1, *([1] * (len(rest) - 1))))
            if staged:
                out[start:stop] = chunk
        dense = out.reshape(rows * d, *rest).movedim(0, axis).contiguous().reshape(self.shape)
        if self.outliers is not None and self.outliers.nnz:
            dense = dense.contiguous()
            dense.view(-1)[self.outliers.indices.long()] = self.outliers.values.to(self.dtype)
        return dense


def _lookup(lut: torch.Tensor, indices: torch.Tensor, out: torch.Tensor) -> None:
    """Write ``lut[indices]`` into ``out`` (same dtype as ``lut``).

    ``lut``: (k, d); ``indices``: uint8 (n, m); ``out``: (n, d, ...) with m entries per
    row after ``d``. On the CPU the lookup is ``np.take`` on the uint8 indices (no
    int64 copy, no OpenMP team), straight into ``out`` when ``d`` is 1.
    """
    if lut.device.type == "cpu" and indices.device.type == "cpu":
        table = lut.detach().numpy()
        if out.shape[1] == 1 and out.is_contiguous():
            np.take(table[:, 0], indices.numpy(), out=out.numpy().reshape(indices.shape), mode="clip")
            return
        values = torch.from_numpy(np.take(table, indices.numpy(), axis=0, mode="clip"))  # (n, m, d)
    else:
        values = lut[indices.long()]
    out.copy_(values.permute(0, 2, 1).reshape(out.shape))


@define(frozen=True, eq=False)
class QuantizedTensor:
    """A tensor stored as integers: ``dense = (int_data - zero_point) * scale``.

    ``scale``/``zero_point`` have one dimension per weight dimension, each dividing
    the weight's: a scale entry covers a block of ``shape[k] // scale.shape[k]``
    elements along dim ``k`` (all ones: per-tensor; ``(C,1,..)``: per-channel along
    0; blocks along an axis: per-block). int4 values are stored in int8.
    """

    int_data: torch.Tensor
    scale: torch.Tensor
    zero_point: Optional[torch.Tensor]
    spec: QuantizationSpec
    shape: tuple[int, ...]
    dtype: torch.dtype

    def expanded(self, t: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-block tensor (scale, zero point) to the weight's shape."""
        for dim, (full, part) in enumerate(zip(self.shape, t.shape)):
            if part not in (1, full):
                t = t.repeat_interleave(full // part, dim=dim)
        return t

    def dequantize(self) -> torch.Tensor:
        """The dense tensor at the original dtype."""
        values = self.int_data.float()
        if self.zero_point is not None:
            values = values - self.expanded(self.zero_point.float())
        return (values * self.expanded(self.scale.float())).to(self.dtype)


@define(frozen=True, eq=False)
class ActivationQuant:
    """Fixed quantization of an activation (a module input or output): scale, zero point, spec."""

    scale: torch.Tensor
    zero_point: Optional[torch.Tensor]
    spec: QuantizationSpec

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``x`` with these parameters."""
        lo, hi = self.spec.quant_range
        zp = self.zero_point if self.zero_point is not None else torch.zeros_like(self.scale)
        q = torch.clamp(torch.round(x / self.scale) + zp, lo, hi)
        return (q - zp) * self.scale


Record = Union[PalettizedTensor, QuantizedTensor, ActivationQuant]


def attach(module: nn.Module, name: str, record: Record) -> None:
    """Attach ``record`` to ``module`` under ``name`` (a tensor name, or ``input.0``/``output.0``).

    From then on the module's ``state_dict()`` carries the record and
    ``load_state_dict()`` rebuilds it (:mod:`bitsmith.state`).
    """
    from .state import install_hooks

    records = module.__dict__.setdefault(_ATTR, {})
    records[name] = record
    install_hooks(module)


def apply(module: nn.Module, name: str, record: Union[PalettizedTensor, QuantizedTensor]) -> None:
    """Attach a weight record and write its dequantized values into the module's tensor."""
    tensor = getattr(module, name)
    with torch.no_grad():
        tensor.data = record.dequantize().to(device=tensor.device, dtype=tensor.dtype)
    attach(module, name, record)


def detach(module: nn.Module, name: str) -> Optional[Record]:
    """Remove and return the record attached under ``name``."""
    return module.__dict__.get(_ATTR, {}).pop(name, None)


def records(module: nn.Module) -> dict[str, Record]:
    """The records attached to ``module`` (a live dict; empty when none)."""
    return module.__dict__.get(_ATTR, {})


def iter_records(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Record]]:
    """Yield ``(module_name, module, tensor_name, record)`` for every attached record, in module order."""
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, record in list(records(module).items()):
            yield module_name, module, name, record


def is_compressed(model: nn.Module) -> bool:
    """True when any module of ``model`` carries a record."""
    return any(True for _ in iter_records(model))
