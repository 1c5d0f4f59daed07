"""Input second moments of layers on calibration data: ``H = E[x x^T]`` per group of input columns.

A layer's output row ``c`` is ``w_c . x`` where ``x`` is a column of the layer's
input as the weight sees it: the input vector of a ``Linear``, an unfolded patch
(``in_channels / groups * kernel`` values) of a convolution. Replacing ``w_c`` by
``q_c`` changes the output by ``(w_c - q_c) . x``, whose mean square over the data
is ``(w_c - q_c)^T H (w_c - q_c)``. Grouped (e.g. depthwise) convolutions have one
``H`` per group, since each group of output channels sees its own input channels.

Supported: ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` with zero padding given
as numbers (any stride, dilation, groups). :func:`layer_layout` returns ``None``
for anything else (the palettizer then keeps plain k-means indices there).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from attrs import define
from torch import nn

from bitsmith.mixed_precision.inputs import to_device, weights_device

__all__ = ["InputStats", "LayerLayout", "collect_input_stats", "layer_layout"]

_CHUNK_ELEMENTS = 1 << 23
"""Unfold at most about this many values at a time (bounds memory on large activations)."""


@define(frozen=True)
class LayerLayout:
    """How a layer's weight rows meet its input: ``groups`` blocks of ``rows`` rows by ``columns`` columns."""

    groups: int
    rows: int
    columns: int


def layer_layout(module: nn.Module) -> Optional[LayerLayout]:
    """The layout of ``module``'s weight, or ``None`` when GPTQ assignment does not apply to it."""
    if isinstance(module, nn.Linear):
        return LayerLayout(1, module.out_features, module.in_features)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and type(module).__name__ not in ("LazyConv1d", "LazyConv2d"):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        w = module.weight
        return LayerLayout(module.groups, w.shape[0] // module.groups, w[0].numel())
    return None


def _columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input columns as ``(groups, columns, n)`` float64."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T.double().unsqueeze(0)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, dilation = (1, module.kernel_size[0]), (1, module.dilation[0])
        padding, stride = (0, module.padding[0]), (1, module.stride[0])
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C*k, L)
    groups = module.groups
    b, d, n = cols.shape
    return cols.reshape(b, groups, d // groups, n).permute(1, 2, 0, 3).reshape(groups, d // groups, b * n).double()


class InputStats:
    """Accumulated ``sum x x^T`` and sample counts per layer (qualified tensor name -> ``(groups, D, D)``)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.samples = 0

    def add(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        """Add one input batch of ``module`` (chunked along the batch so unfolding stays small)."""
        kernel = 1 if isinstance(module, nn.Linear) else module.weight[0, 0].numel()
        per_sample = max(1, x[0].numel() * kernel)  # unfolded values per sample (at most, stride 1)
        step = max(1, _CHUNK_ELEMENTS // per_sample)
        for start in range(0, x.shape[0], step):
            cols = _columns(module, x[start:start + step].detach())
            gram = cols @ cols.transpose(1, 2)
            self.sums[name] = gram if name not in self.sums else self.sums[name] + gram
            self.counts[name] = self.counts.get(name, 0) + cols.shape[2]

    def hessian(self, name: str) -> torch.Tensor:
        """``E[x x^T]`` per group, ``(groups, D, D)`` float64."""
        if name not in self.sums:
            raise KeyError(f"no calibration statistics for {name!r}; collected for: {', '.join(self.sums) or 'nothing'}")
        return self.sums[name] / max(1, self.counts[name])

    def __contains__(self, name: object) -> bool:
        return name in self.sums

    def names(self) -> list[str]:
        """Layers with statistics."""
        return list(self.sums)

    def __repr__(self) -> str:
        return f"InputStats({len(self.sums)} layers, {self.samples} samples)"


def collect_input_stats(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], data: Iterable[Any],
                        num_samples: Optional[int] = None) -> InputStats:
    """Run ``model`` on ``data`` and accumulate ``E[x x^T]`` of each ``(name, module)`` in ``layers``.

    :param data: batches: tensors (``model(batch)``), tuples (``model(*batch)``) or
        dicts (``model(**batch)``).
    :param num_samples: stop after this many samples (first dimension), default all.

    Batches are moved to the model's device (when all its weights share one), so
    calibration data prepared on the CPU feeds a model placed on an accelerator.
    """
    stats = InputStats()
    supported = [(name, module) for name, module in layers if layer_layout(module) is not None]
    if not supported:
        return stats

    def hook(name: str):
        def fn(module, inputs):
            stats.add(name, module, inputs[0])
        return fn

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in supported]
    was_training = model.training
    model.eval()
    home = weights_device(model)
    try:
        with torch.inference_mode():
            for batch in data:
                if num_samples is not None and stats.samples >= num_samples:
                    break
                batch = _trim(batch, None if num_samples is None else num_samples - stats.samples)
                if home is not None:
                    batch = to_device(batch, home)
                if isinstance(batch, dict):
                    model(**batch)
                elif isinstance(batch, (tuple, list)):
                    model(*batch)
                else:
                    model(batch)
                stats.samples += _size(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def _size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim():
            return int(value.shape[0])
    return 1


def _trim(batch: Any, limit: Optional[int]) -> Any:
    if limit is None or _size(batch) <= limit:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch[:limit]
    if isinstance(batch, dict):
        return {k: v[:limit] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in batch.items()}
    return type(batch)(v[:limit] if isinstance(v, torch.Tensor) and v.dim() else v for v in batch)
