"""Torch-side markers that carry compressed tensors through ``torch.onnx.export``.

A compressed weight is routed through :class:`WeightMarker` (a parametrization): in
eager PyTorch it returns the dense weight unchanged; in the exported graph it becomes
one ``bitsmith::CompressedWeight`` node with a ``key`` attribute, which
:mod:`bitsmith_export_onnx.graph` replaces by the decompression subgraph built from the
record. Custom-domain nodes are never constant-folded or fused by the exporter, so the
mapping from graph to record survives every exporter pass.

An activation record becomes a QuantizeLinear -> DequantizeLinear pair (``QDQ``); in eager
PyTorch it is :meth:`bitsmith.compressed.ActivationQuant.fake_quantize`. The hooks are the
core's (:mod:`bitsmith.activation_hooks`); :func:`step` is what they apply.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from bitsmith.compressed import ActivationQuant
from bitsmith.errors import CompressionError

DOMAIN = "bitsmith"
"""Custom op domain of the placeholder nodes (removed from the final graph)."""

WEIGHT_OP = "CompressedWeight"
"""Placeholder op type for one compressed weight."""


class _CompressedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, key: str) -> torch.Tensor:
        return weight.clone()

    @staticmethod
    def symbolic(g: Any, weight: Any, key: str) -> Any:
        out = g.op(f"{DOMAIN}::{WEIGHT_OP}", weight, key_s=key)
        out.setType(weight.type())
        return out


class WeightMarker(nn.Module):
    """Parametrization tagging a weight with the ``key`` of its record (identity in eager mode)."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return ``weight`` (through a function the ONNX exporter turns into a placeholder node)."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return _CompressedWeight.apply(weight, self.key)
        return weight


def _onnx_dtype(spec: Any) -> int:
    from onnx import TensorProto

    return {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}[spec.dtype_name]


class _QDQ(torch.autograd.Function):
    # Only used while exporting: the traced body must stay free of tensor constants (the
    # TorchScript passes mishandle several such bodies), so it is a clone; the values that
    # reach the ONNX graph come from ``symbolic``.
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, record: ActivationQuant) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def symbolic(g: Any, x: Any, record: ActivationQuant) -> Any:
        scale, zero_point, axis = qdq_params(record, _rank(x))
        scale_c = g.op("Constant", value_t=scale)
        zp_c = g.op("Constant", value_t=zero_point)
        kwargs = {} if axis is None else {"axis_i": axis}
        q = g.op("QuantizeLinear", x, scale_c, zp_c, **kwargs)
        out = g.op("DequantizeLinear", q, scale_c, zp_c, **kwargs)
        out.setType(x.type())
        return out


def _rank(x: Any) -> int:
    try:
        return x.type().dim()
    except Exception:  # noqa: BLE001 - unknown rank: per-tensor params only
        return 0


def check_activation(record: ActivationQuant, where: str) -> None:
    """Raise :class:`CompressionError` naming ``where`` if ONNX cannot express ``record``."""
    if record.spec.dtype_name not in ("int8", "uint8"):
        raise CompressionError(f"{where}: activation dtype {record.spec.dtype_name!r} is not exportable to ONNX "
                               "QuantizeLinear here; use int8 or uint8")
    nontrivial = [d for d, s in enumerate(record.scale.shape) if s != 1]
    if len(nontrivial) > 1:
        raise CompressionError(f"{where}: activation scale of shape {tuple(record.scale.shape)} varies along more "
                               "than one dim; ONNX QuantizeLinear supports per-tensor or one axis")


def qdq_params(record: ActivationQuant, rank: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``(scale, zero_point, axis)`` for QuantizeLinear/DequantizeLinear from an activation record."""
    spec = record.spec
    dtype = torch.int8 if spec.dtype_name == "int8" else torch.uint8
    scale = record.scale.detach().float()
    zp = record.zero_point
    zp = torch.zeros_like(scale) if zp is None else zp.detach().float().expand_as(scale)
    nontrivial = [d for d, s in enumerate(scale.shape) if s != 1]
    if not nontrivial:
        return scale.reshape(()), zp.reshape(()).round().to(dtype), None
    d = nontrivial[0]
    axis = rank - scale.dim() + d if rank else d
    return scale.reshape(-1), zp.reshape(-1).round().to(dtype), axis


def qdq(x: torch.Tensor, record: ActivationQuant) -> torch.Tensor:
    """Fake-quantize ``x`` with ``record`` (eager) or emit QuantizeLinear/DequantizeLinear (export)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return _QDQ.apply(x, record)
    return record.fake_quantize(x)


def step(record: ActivationQuant) -> Any:
    """The activation hook step for ``record`` (:mod:`bitsmith.activation_hooks`): :func:`qdq` with it bound."""
    return functools.partial(qdq, record=record)
