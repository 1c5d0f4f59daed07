"""Modules whose compressed weights are computed, at every access, from LUT/index or integer buffers.

:func:`convert_weight` turns one compressed tensor of a module (a palettized or an
integer-quantized weight) into named buffers (see the plugin README for the exact
names, shapes and dtypes) and removes the dense parameter. The module keeps its
place in the model, its class (through a subclass created once per layer class,
``isinstance`` still holds), its other parameters and its attached records; reading
``module.weight`` computes the dense tensor from the buffers with plain torch ops
(a gather from the LUT, or ``(int - zero_point) * scale``), so a tracing converter
sees the lookup-table or dequantize computation and its inputs. The values are
bit-identical to the record's ``dequantize()``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from attrs import define
from torch import nn

from bitsmith.compressed import PalettizedTensor, QuantizedTensor
from bitsmith.errors import CompressionError
from bitsmith.export import CONVERTED, Converted, mark_converted

FORMAT_VERSION = 1
"""First entry of every ``<tensor>_lut_params`` buffer."""


@define(frozen=True)
class LutLayout:
    """How a palettized tensor is rebuilt from its buffers (see :func:`lut_to_dense`)."""

    axis: int
    cluster_dim: int
    group_size: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    float_dtype: torch.dtype
    quantized_lut: bool
    per_channel_scale: bool
    outliers: bool

    def dense(self, module: nn.Module, name: str) -> torch.Tensor:
        """The dense tensor ``name`` of ``module``."""
        buffers = module._buffers
        if self.quantized_lut:
            int_lut = buffers[f"{name}_lut_int"]
            scale = buffers[f"{name}_lut_scale"]
            values = int_lut.float()
            zero_point = buffers.get(f"{name}_lut_zero_point")
            if zero_point is not None:
                values = values - zero_point.float()[:, None, None]
            lut = values * scale[:, None, None]
            anchor = scale
        else:
            lut = buffers[f"{name}_lut"]
            anchor = lut
        pcs = buffers.get(f"{name}_per_channel_scale") if self.per_channel_scale else None
        dense = lut_to_dense(lut, buffers[f"{name}_indices"], self.axis, self.cluster_dim, self.group_size, pcs,
                             _out_dtype(anchor, self.float_dtype, self.dtype), self.shape)
        if self.outliers:
            positions = buffers[f"{name}_outlier_indices"]
            dense = dense.reshape(-1).index_put((positions,), buffers[f"{name}_outlier_values"].to(dense.dtype))
            dense = dense.reshape(self.shape)
        return dense


@define(frozen=True)
class IntLayout:
    """How an integer-quantized tensor is rebuilt: ``(int - zero_point) * scale``, blocks broadcast."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    float_dtype: torch.dtype

    def dense(self, module: nn.Module, name: str) -> torch.Tensor:
        """The dense tensor ``name`` of ``module``."""
        buffers = module._buffers
        scale = buffers[f"{name}_scale"]
        values = buffers[f"{name}_int"].float()
        zero_point = buffers.get(f"{name}_zero_point")
        if zero_point is not None:
            values = values - _expand(zero_point.float(), self.shape)
        return (values * _expand(scale.float(), self.shape)).to(_out_dtype(scale, self.float_dtype, self.dtype))


Layout = Union[LutLayout, IntLayout]


def lut_to_dense(lut: torch.Tensor, indices: torch.Tensor, axis: int, cluster_dim: int, group_size: int,
                 per_channel_scale: Optional[torch.Tensor], dtype: torch.dtype,
                 shape: tuple[int, ...]) -> torch.Tensor:
    """Dense tensor from ``lut`` ``(G, 2**n_bits, cluster_dim)`` and ``indices`` (layout of :mod:`bitsmith.compressed`).

    One LUT of scalars (the common case) is a single gather ``lut.reshape(-1)[indices]``.
    """
    if cluster_dim == 1 and group_size == shape[axis]:  # python ints: no data-dependent branch when traced
        dense = lut.reshape(-1)[indices.long()]
    else:
        idx = indices.long().movedim(axis, 0)
        rows = idx.shape[0]
        lut_of_row = torch.div(torch.arange(rows, device=idx.device) * cluster_dim, group_size, rounding_mode="floor")
        values = lut[lut_of_row[:, None], idx.reshape(rows, -1)]
        values = values.permute(0, 2, 1).reshape(rows * cluster_dim, *idx.shape[1:])
        dense = values.movedim(0, axis)
    if per_channel_scale is not None:
        dense = dense * per_channel_scale.reshape(-1, *([1] * (dense.dim() - 1)))
    return dense.to(dtype).reshape(shape)


def _expand(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    for dim, (full, part) in enumerate(zip(shape, t.shape)):
        if part not in (1, full):
            t = t.repeat_interleave(full // part, dim=dim)
    return t


def _out_dtype(anchor: torch.Tensor, anchor_dtype: torch.dtype, recorded: torch.dtype) -> torch.dtype:
    """The record's dtype, unless the float buffers were cast since conversion (``model.half()``): then theirs."""
    return recorded if anchor.dtype == anchor_dtype else anchor.dtype


# ---------------------------------------------------------------------------- module classes


class CoreAIModule:
    """Mixin placed in front of a layer class: computed tensors are served from their layouts.

    The generated subclass (``CoreAILinear`` …) pickles and deep-copies by rebuilding
    itself from the original layer class, so finalized models work with
    ``copy.deepcopy`` and ``torch.save``.
    """

    _bitsmith_base: type = nn.Module

    def __getattr__(self, name: str) -> Any:
        converted = self.__dict__.get(CONVERTED)
        if converted is not None and name in converted:
            return converted[name].layout.dense(self, name)
        return super().__getattr__(name)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return _rebuild, (type(self)._bitsmith_base,), self.__dict__.copy()


_CLASSES: dict[type, type] = {}


def coreai_class(base: type) -> type:
    """The ``CoreAI<Base>`` subclass of layer class ``base`` (created once, cached)."""
    if issubclass(base, CoreAIModule):
        return base
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(f"CoreAI{base.__name__}", (CoreAIModule, base),
                   {"__module__": __name__, "_bitsmith_base": base,
                    "__doc__": f"{base.__name__} whose compressed weights are computed from LUT/int buffers."})
        _CLASSES[base] = cls
    return cls


def _rebuild(base: type) -> nn.Module:
    cls = coreai_class(base)
    return cls.__new__(cls)


def layouts(module: nn.Module) -> dict[str, Layout]:
    """The converted tensors of ``module`` and their layouts (empty when none)."""
    return {name: conv.layout for name, conv in module.__dict__.get(CONVERTED, {}).items()}


def convert_weight(module: nn.Module, name: str, record: Union[PalettizedTensor, QuantizedTensor],
                   qualified_name: str) -> bool:
    """Replace tensor ``name`` of ``module`` by the buffers of ``record``; False if already converted."""
    if name in layouts(module):
        return False
    if name in module._parameters:
        store = module._parameters
    elif name in module._buffers:
        store = module._buffers
    else:
        raise CompressionError(f"{qualified_name}: has a {type(record).__name__} record but no parameter or "
                               f"buffer named {name!r} to replace")
    buffers, layout = _buffers_for(record, name)
    clash = [b for b in buffers if hasattr(module, b)]
    if clash:
        raise CompressionError(f"{qualified_name}: cannot add buffers {', '.join(clash)}: the module already "
                               "has attributes with these names")
    del store[name]
    for buffer_name, tensor in buffers.items():
        module.register_buffer(buffer_name, tensor)
    mark_converted(module, name, Converted(buffers=tuple(buffers), parameter=store is module._parameters,
                                           layout=layout))
    module.__class__ = coreai_class(type(module))
    return True


def _buffers_for(record: Union[PalettizedTensor, QuantizedTensor], name: str) -> tuple[dict[str, torch.Tensor], Layout]:
    if isinstance(record, QuantizedTensor):
        buffers = {f"{name}_int": record.int_data, f"{name}_scale": record.scale}
        if record.zero_point is not None:
            buffers[f"{name}_zero_point"] = record.zero_point
        return buffers, IntLayout(shape=tuple(record.shape), dtype=record.dtype, float_dtype=record.scale.dtype)
    if not isinstance(record, PalettizedTensor):
        raise TypeError(f"not a weight record: {record!r}")
    buffers: dict[str, torch.Tensor] = {}
    quant = record.lut_quant
    if quant is None:
        buffers[f"{name}_lut"] = record.lut
    else:
        buffers[f"{name}_lut_int"] = quant.int_lut
        buffers[f"{name}_lut_scale"] = quant.scale
        if quant.zero_point is not None:
            buffers[f"{name}_lut_zero_point"] = quant.zero_point
    buffers[f"{name}_indices"] = record.indices
    if record.per_channel_scale is not None:
        buffers[f"{name}_per_channel_scale"] = record.per_channel_scale
    outliers = record.outliers is not None and record.outliers.nnz > 0
    if outliers:
        buffers[f"{name}_outlier_indices"] = record.outliers.indices.long()
        buffers[f"{name}_outlier_values"] = record.outliers.values
    buffers[f"{name}_lut_params"] = torch.tensor(
        [FORMAT_VERSION, record.n_bits, record.axis, record.cluster_dim, record.group_size], dtype=torch.int64)
    layout = LutLayout(axis=record.axis, cluster_dim=record.cluster_dim, group_size=record.group_size,
                       shape=tuple(record.shape), dtype=record.dtype,
                       float_dtype=(record.lut if quant is None else quant.scale).dtype, quantized_lut=quant is not None,
                       per_channel_scale=record.per_channel_scale is not None, outliers=outliers)
    return buffers, layout
