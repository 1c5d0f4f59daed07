"""Activation quantization as ``torch.quantize_per_tensor`` -> ``dequantize`` pairs around a module.

An :class:`~bitsmith.compressed.ActivationQuant` record attached under ``input.<i>``
quantizes the module's ``i``-th positional input (a forward pre-hook), one under
``output.<i>`` its ``i``-th output (a forward hook; ``output.0`` of a module that
returns one tensor is that tensor). The scale and zero point are baked into the hook
as Python numbers, so a traced graph holds ``aten::quantize_per_tensor`` /
``aten::dequantize`` with constant parameters, which converters map to a
quantize/dequantize op pair. Records whose dtype has no PyTorch quantized type
(int4, uint4, float8) or whose scale is not a single number fall back to the
record's own fake quantization. The module itself is not replaced: its name,
class and state dict stay the same.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import nn

from bitsmith import compressed
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


class InputQDQ:
    """Forward pre-hook applying :class:`QDQ` to the selected positional inputs."""

    def __init__(self, steps: dict[int, QDQ]):
        self.steps = steps

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return tuple(self.steps[i](a) if i in self.steps and isinstance(a, torch.Tensor) else a
                     for i, a in enumerate(args))


class OutputQDQ:
    """Forward hook applying :class:`QDQ` to the selected outputs (a tensor is output 0)."""

    def __init__(self, steps: dict[int, QDQ]):
        self.steps = steps

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return self.steps[0](output) if 0 in self.steps else output
        if isinstance(output, (tuple, list)):
            return type(output)(self.steps[i](o) if i in self.steps and isinstance(o, torch.Tensor) else o
                                for i, o in enumerate(output))
        return output


def activation_steps(module: nn.Module) -> tuple[dict[int, ActivationQuant], dict[int, ActivationQuant]]:
    """``({input index: record}, {output index: record})`` of the activation records on ``module``."""
    inputs: dict[int, ActivationQuant] = {}
    outputs: dict[int, ActivationQuant] = {}
    for name, record in compressed.records(module).items():
        if not isinstance(record, ActivationQuant):
            continue
        direction, _, index = name.partition(".")
        if direction not in ("input", "output") or not index.isdigit():
            raise ValueError(f"activation record name {name!r}: expected 'input.<i>' or 'output.<i>'")
        (inputs if direction == "input" else outputs)[int(index)] = record
    return inputs, outputs


def install(module: nn.Module, make: Any = QDQ) -> int:
    """(Re)install the hooks for ``module``'s activation records; returns how many activations they cover."""
    remove(module)
    inputs, outputs = activation_steps(module)
    handles = []
    if inputs:
        handles.append(module.register_forward_pre_hook(InputQDQ({i: make(r) for i, r in inputs.items()})))
    if outputs:
        handles.append(module.register_forward_hook(OutputQDQ({i: make(r) for i, r in outputs.items()})))
    if handles:
        module.__dict__[HOOKS] = handles
    return len(inputs) + len(outputs)


def remove(module: nn.Module) -> None:
    """Remove hooks installed by :func:`install`."""
    for handle in module.__dict__.pop(HOOKS, []):
        handle.remove()


