"""Which activations to quantize: one probe run, spec resolution, activation fusion.

:func:`probe` runs the example inputs once with temporary forward hooks and records,
per module, which positional inputs and outputs are floating-point tensors, how
often it ran, and, for activation modules (:data:`FUSABLE_ACTIVATIONS`), which leaf
module produced the tensor they consume. :func:`plan_activations` asks
:func:`bitsmith.resolve.resolve_activation_spec` for every such input/output.

Fusion (on by default): an INT8 runtime executes ``conv -> relu`` as one op and
quantizes only the activation's output; quantizing the conv's pre-activation output
would spend half the grid on negative values the ReLU discards. So when a
``ReLU``/``ReLU6``/``Hardtanh`` consumes exactly the tensor a layer produced (the
same tensor object, possibly through ``nn.Identity`` or a folded batch norm) on
every call, the layer's output spec moves to the activation's output: the record is
attached to the activation module as ``output.0`` (its rule says ``fused``). With
hooks and no tracing, a layer whose output also feeds another consumer cannot be
told apart; that consumer then sees the unquantized tensor.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from attrs import define, field
from torch import nn

from bitsmith.resolve import resolve_activation_spec

from .sites import float_positions

FUSABLE_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
"""Activations whose output takes over the quantization of the layer feeding them."""


@define
class ModuleRun:
    """What the probe saw of one module: float input/output positions, calls, producers of its input 0."""

    inputs: list[int] = field(factory=list)
    outputs: list[int] = field(factory=list)
    calls: int = 0
    producers: list[Optional[int]] = field(factory=list)


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call ``model`` with a tensor, a tuple/list of positional arguments, or a dict of keyword arguments."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _is_leaf(module: nn.Module) -> bool:
    return next(iter(module.children()), None) is None


def probe(model: nn.Module, example_inputs: Any) -> dict[int, ModuleRun]:
    """Run ``example_inputs`` once (no grad); per module id, a :class:`ModuleRun`."""
    runs: dict[int, ModuleRun] = {}
    producer: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # keeps tensors alive so their ids stay unique during the run

    def record(module: nn.Module, args: tuple, output: Any) -> None:
        run = runs.setdefault(id(module), ModuleRun())
        run.calls += 1
        for target, positions in ((run.inputs, float_positions(args)), (run.outputs, float_positions(output))):
            target.extend(p for p in positions if p not in target)
        if isinstance(module, FUSABLE_ACTIVATIONS):
            first = args[0] if args else None
            run.producers.append(producer.get(id(first)) if isinstance(first, torch.Tensor) else None)
        if isinstance(output, torch.Tensor) and _is_leaf(module) and id(output) not in producer:
            producer[id(output)] = id(module)
            keep.append(output)

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    for run in runs.values():
        run.inputs.sort()
        run.outputs.sort()
    return runs


@define
class PlannedModule:
    """Quantized activations of one module: ``inputs``/``outputs`` as ``(index, spec, rule)`` lists."""

    name: str
    module: nn.Module
    inputs: list[tuple[int, Any, str]] = field(factory=list)
    outputs: list[tuple[int, Any, str]] = field(factory=list)


def plan_activations(model: nn.Module, config: Any, runs: dict[int, ModuleRun], *,
                     fuse: bool = True) -> list[PlannedModule]:
    """The activation sites of ``model`` under ``config`` for the modules the probe saw, in module order."""
    modules = dict(model.named_modules(remove_duplicate=False))
    planned: dict[int, PlannedModule] = {}
    order = []
    for name, module in model.named_modules():
        run = runs.get(id(module))
        if run is None:
            continue
        entry = PlannedModule(name, module)
        for direction, positions, target in (("input", run.inputs, entry.inputs),
                                             ("output", run.outputs, entry.outputs)):
            for index in positions:
                spec, rule = resolve_activation_spec(config, modules, name, direction, index)
                if spec is not None:
                    target.append((index, spec, rule))
        planned[id(module)] = entry
        order.append(id(module))
    if fuse:
        _fuse(planned, runs)
    return [planned[i] for i in order if planned[i].inputs or planned[i].outputs]


def _fuse(planned: dict[int, PlannedModule], runs: dict[int, ModuleRun]) -> None:
    for act_id, run in runs.items():
        if not run.producers or act_id not in planned:
            continue
        sources = set(run.producers)
        if len(sources) != 1 or None in sources:
            continue
        (source,) = sources
        layer, act = planned.get(source), planned[act_id]
        if layer is None or source == act_id or runs[source].calls != run.calls:
            continue
        moved = [o for o in layer.outputs if o[0] == 0]
        if not moved or runs[source].outputs != [0]:
            continue
        layer.outputs = [o for o in layer.outputs if o[0] != 0]
        if not any(o[0] == 0 for o in act.outputs):
            index, spec, rule = moved[0]
            act.outputs.append((0, spec, f"{rule} (fused: {layer.name} -> {act.name})"))
            act.outputs.sort(key=lambda o: o[0])
