"""The ``local`` scoring engine: each layer on its own cached calibration inputs.

For models too large to re-run end to end once per (layer, candidate): a baseline
pass captures every call of the scored layers (positional and keyword inputs, and the
output), then each candidate runs *only that layer* on those inputs and the metric
compares the layer's output with its baseline output (all calls flattened and
concatenated). Nothing after the layer is re-run, so the work per pair is one layer,
not one model; the price is that the score measures the layer's own output error,
not its effect on the model output. Its rank correlation with end-to-end scores is
printed by ``benchmarks/sensitivity_bench.py --local`` and quoted in
docs/mixed_precision.md. Use a metric that compares values (``sqnr``, ``psnr``,
``mse``): a layer's output is not a class distribution.

Memory: layers are captured in groups whose inputs and outputs fit in
``budget_bytes`` (one extra baseline pass per group; a layer larger than the budget
is a group of its own), so activations of the whole model are never held at once.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .inputs import Batch, default_output_fn, score_candidates

__all__ = ["DEFAULT_BUDGET_BYTES", "score_locally"]

DEFAULT_BUDGET_BYTES = 1 << 30
"""Captured inputs and outputs held at once by the local engine (1 GiB)."""


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def _flat(output: Any) -> torch.Tensor:
    return default_output_fn(output).detach().to("cpu", torch.float32).reshape(-1)


def _capture(model: nn.Module, batches: Sequence[Batch], names: Sequence[str], keep: bool) -> dict[str, Any]:
    """Per layer name: its calls' ``(args, kwargs)`` and flattened outputs (``keep``), or the bytes they take."""
    found: dict[str, Any] = {name: ([] if keep else 0) for name in names}
    handles = []
    for name in names:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = name) -> None:
            if keep:
                found[name].append((args, kwargs, _flat(output)))
            else:
                found[name] += _nbytes(args) + _nbytes(kwargs) + _nbytes(output)

        handles.append(model.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            for args, kwargs in batches:
                model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _groups(sizes: dict[str, int], budget_bytes: int) -> list[list[str]]:
    groups: list[list[str]] = []
    total = budget_bytes + 1
    for name, size in sizes.items():
        if total + size > budget_bytes:
            groups.append([])
            total = 0
        groups[-1].append(name)
        total += size
    return groups


def score_locally(model: nn.Module, batches: Sequence[Batch], tasks: Sequence[Any], metric: Any,
                  record: Callable[[int, int, float, float], None], *,
                  budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
    """Score every candidate of every task (``EvalTask``) on its layer's own output; ``record(layer, cand, score, s)``.

    A layer that never runs on ``batches`` scores as unchanged (its output is empty).
    """
    by_name: dict[str, list[Any]] = {}
    for task in tasks:
        by_name.setdefault(task.name, []).append(task)
    sizes = _capture(model, batches, list(by_name), keep=False)
    for group in _groups(sizes, budget_bytes):
        calls = _capture(model, batches, group, keep=True)
        for name in group:
            module = model.get_submodule(name)
            reference = torch.cat([out for _, _, out in calls[name]]) if calls[name] else torch.ones(1)
            def run(module: nn.Module = module, name: str = name, reference: torch.Tensor = reference) -> torch.Tensor:
                with torch.inference_mode():
                    outs = [_flat(module(*args, **kwargs)) for args, kwargs, _ in calls[name]]
                return torch.cat(outs) if outs else reference

            def score(out: torch.Tensor, reference: torch.Tensor = reference) -> float:
                return float(metric.score(reference.reshape(1, -1), out.reshape(1, -1)))

            for task in by_name[name]:
                score_candidates(module, task, run, score, record)
        del calls
