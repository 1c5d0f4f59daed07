"""Activation quantization around a module: the one set of forward hooks every backend uses.

An :class:`~bitsmith.compressed.ActivationQuant` record attached under ``input.<i>``
applies to the module's ``i``-th positional input (a forward pre-hook), one under
``output.<i>`` to its ``i``-th output (a forward hook; ``output.0`` of a module that
returns one tensor is that tensor). What happens to the tensor is the caller's choice:
``make(record)`` returns the step (a callable tensor -> tensor). The core's eager mode
uses :meth:`~bitsmith.compressed.ActivationQuant.fake_quantize`; export backends pass a
step that also emits their graph's quantize/dequantize ops while tracing. Steps are built
when the hooks are installed, so hooks keep working after the records are detached (the
``torch`` backend drops records but keeps activation quantization).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from . import compressed
from .compressed import ActivationQuant

Step = Callable[[torch.Tensor], torch.Tensor]
MakeStep = Callable[[ActivationQuant], Step]


def fake_quantize_step(record: ActivationQuant) -> Step:
    """The eager step: :meth:`~bitsmith.compressed.ActivationQuant.fake_quantize` of ``record``."""
    return record.fake_quantize


def activation_records(module: nn.Module) -> tuple[dict[int, ActivationQuant], dict[int, ActivationQuant]]:
    """``({input index: record}, {output index: record})`` of the activation records on ``module``.

    Raises ``ValueError`` for a record name that is not ``input.<i>``/``output.<i>``.
    """
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


class InputSteps:
    """Forward pre-hook applying a step to the selected positional inputs (picklable)."""

    def __init__(self, steps: dict[int, Step]):
        self.steps = steps

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return tuple(self.steps[i](a) if i in self.steps and isinstance(a, torch.Tensor) else a
                     for i, a in enumerate(args))


class OutputSteps:
    """Forward hook applying a step to the selected outputs (a single tensor is output 0; picklable)."""

    def __init__(self, steps: dict[int, Step]):
        self.steps = steps

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return self.steps[0](output) if 0 in self.steps else output
        if isinstance(output, (tuple, list)):
            return type(output)(self.steps[i](o) if i in self.steps and isinstance(o, torch.Tensor) else o
                                for i, o in enumerate(output))
        return output


def install(module: nn.Module, key: str, make: MakeStep = fake_quantize_step) -> int:
    """(Re)install hooks for ``module``'s activation records under ``key``; returns how many activations they cover.

    ``key`` names the owner (each backend its own), so owners never remove each other's
    hooks; the handles live in ``module.__dict__[key]``.
    """
    remove(module, key)
    inputs, outputs = activation_records(module)
    handles = []
    if inputs:
        handles.append(module.register_forward_pre_hook(InputSteps({i: make(r) for i, r in inputs.items()})))
    if outputs:
        handles.append(module.register_forward_hook(OutputSteps({i: make(r) for i, r in outputs.items()})))
    if handles:
        module.__dict__[key] = handles
    return len(inputs) + len(outputs)


def remove(module: nn.Module, key: str) -> None:
    """Remove the hooks installed on ``module`` under ``key``."""
    for handle in module.__dict__.pop(key, []):
        handle.remove()


def install_all(model: nn.Module, key: str, make: MakeStep = fake_quantize_step) -> int:
    """:func:`install` on every module of ``model`` with activation records; returns the number of modules hooked."""
    hooked = 0
    for module in model.modules():
        if any(isinstance(r, ActivationQuant) for r in compressed.records(module).values()):
            hooked += install(module, key, make) > 0
    return hooked


def remove_all(model: nn.Module, key: str) -> None:
    """:func:`remove` on every module of ``model``."""
    for module in model.modules():
        remove(module, key)


__all__ = ["InputSteps", "MakeStep", "OutputSteps", "Step", "activation_records", "fake_quantize_step", "install",
           "install_all", "remove", "remove_all"]
