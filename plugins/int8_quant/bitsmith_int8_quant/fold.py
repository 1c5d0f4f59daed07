"""Fold eval-mode batch norms into the convolution or linear layer that feeds them.

An INT8 deployment never runs a batch norm after a convolution: the converter
merges it into the convolution's weight and bias, and the convolution's output is
what gets quantized. Quantizing the pre-norm convolution output instead wastes the
8 bits on channels the norm later rescales. So :meth:`Quantizer.prepare` folds,
before quantizing anything, every ``BatchNorm1d/2d/3d`` that directly follows a
``Conv1d/2d/3d`` or ``Linear`` inside an ``nn.Sequential`` (the only place where
the layer's output provably feeds nothing but the norm, without tracing)::

    s = gamma / sqrt(running_var + eps)
    weight' = weight * s   (per output channel)     bias' = (bias - running_mean) * s + beta

The norm is replaced by ``nn.Identity`` (same module name, so configs that name
it still resolve). Norms in training mode, without running statistics, after a
transposed convolution, or after a layer whose weight is shared or already
compressed (e.g. palettized) are left in place.
"""

from __future__ import annotations

import torch
from torch import nn

from bitsmith import compressed

FOLDABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Layers a following batch norm is folded into."""

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
"""Batch norms that are folded."""


def _foldable(layer: nn.Module, norm: nn.Module, shared: set[int]) -> bool:
    if not isinstance(layer, FOLDABLE_LAYERS) or type(layer) in (nn.ConvTranspose1d, nn.ConvTranspose2d,
                                                                  nn.ConvTranspose3d):
        return False
    if not isinstance(norm, NORMS) or norm.training or norm.running_mean is None or norm.running_var is None:
        return False
    if id(layer.weight) in shared or "weight" in compressed.records(layer):
        return False
    out_channels = layer.weight.shape[0]
    return norm.num_features == out_channels and layer.weight.is_floating_point()


def _fold_pair(layer: nn.Module, norm: nn.Module) -> None:
    with torch.no_grad():
        w = layer.weight
        s = norm.running_var.to(torch.float64).add(norm.eps).rsqrt()
        gamma = norm.weight.to(torch.float64) if norm.weight is not None else torch.ones_like(s)
        beta = norm.bias.to(torch.float64) if norm.bias is not None else torch.zeros_like(s)
        s = s * gamma
        bias = layer.bias.to(torch.float64) if layer.bias is not None else torch.zeros_like(s)
        new_bias = (bias - norm.running_mean.to(torch.float64)) * s + beta
        w.copy_((w.to(torch.float64) * s.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(device=w.device, dtype=w.dtype), requires_grad=w.requires_grad)
        else:
            layer.bias.copy_(new_bias.to(layer.bias.dtype))


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every foldable (layer, batch norm) pair of ``model`` in place; returns the folded norms' names."""
    counts: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
    shared = {pid for pid, n in counts.items() if n > 1}
    folded = []
    for name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for first, second in zip(keys, keys[1:]):
            layer, norm = seq._modules[first], seq._modules[second]
            if _foldable(layer, norm, shared):
                _fold_pair(layer, norm)
                seq._modules[second] = nn.Identity()
                folded.append(f"{name}.{second}" if name else second)
    return folded
