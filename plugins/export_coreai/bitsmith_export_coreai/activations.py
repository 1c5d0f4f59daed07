"""Activation quantization as ``torch.quantize_per_tensor`` -> ``dequantize`` pairs around a module.

The hooks are the core's (:mod:`bitsmith.activation_hooks`: ``input.<i>`` records act on
the module's ``i``-th positional input, ``output.<i>`` records on its ``i``-th output);
this module supplies the step, :class:`QDQ`. The scale and zero point are baked into the hook
as Python numbers, so a traced graph holds ``aten::quantize_per_tensor`` /
``aten::dequantize`` with constant parameters, which converters map to a
quantize/dequantize op pair. Records whose dtype has no PyTorch quantized type
(int4, uint4, float8) or whose scale is not a single number fall back to the
record's own fake quantization. The module itself is not replaced: its name,
class and state dict stay the same.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from bitsmith import activation_hooks
from bitsmith.compressed import ActivationQuant

HOOKS = "_bitsmith_coreai_hooks"
"""Key in ``module.__dict__`` of the hook handles this backend installed."""

_QDTYPES = {"int8": torch.qint8, "uint8": torch.quint8}


class QDQ:
    """One activation's quantize -> dequantize step (picklable; the graph sees a Q/DQ pair)."""

    def __init__(self, record: ActivationQuant):
        self.record: Optional[ActivationQuant] = None
        self.qdtype = _QDTYPES.get(record.spec.dtype_name)
        if self.qdtype is None or record.scale.numel() != 1:
            self.record = record  # no quantized dtype / not per-tensor: fake quantization instead
            return
        self.scale = float(record.scale.reshape(-1)[0])
        self.zero_point = 0 if record.zero_point is None else int(record.zero_point.reshape(-1)[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize and dequantize ``x`` (same dtype out)."""
        if self.record is not None:
            return self.record.fake_quantize(x).to(x.dtype)
        with warnings.catch_warnings():  # torch 2.13 marks quantized tensor creation as deprecated
            warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*", category=UserWarning)
            q = torch.quantize_per_tensor(x.to(torch.float32), self.scale, self.zero_point, self.qdtype)
        return q.dequantize().to(x.dtype)


def install(module: nn.Module) -> int:
    """(Re)install the Q/DQ hooks for ``module``'s activation records; returns how many activations they cover."""
    return activation_hooks.install(module, HOOKS, QDQ)


def remove(module: nn.Module) -> None:
    """Remove hooks installed by :func:`install`."""
    activation_hooks.remove(module, HOOKS)
