"""Test helpers for export backends: models carrying every kind of compressed record, built with the core only.

No algorithm plugin is needed; shared by the Core AI and torch backend tests.
"""

from __future__ import annotations

import torch
from torch import nn

from bitsmith import compressed
from bitsmith.compressed import ActivationQuant, QuantizedTensor, SparseOutliers
from bitsmith.config import PalettizationSpec, PerGroupedChannelGranularity, QuantizationSpec
from bitsmith.palettization import palettize_tensor


def quantile_clusterer(x, k, *, sample_weight=None, seed=None):
    """Deterministic stand-in for k-means: centroids at quantiles of the first coordinate."""
    x = torch.as_tensor(x, dtype=torch.float32)
    order = torch.argsort(x[:, 0])
    picks = x[order[torch.linspace(0, x.shape[0] - 1, min(k, x.shape[0])).round().long()]]
    centroids = torch.unique(picks, dim=0)
    labels = torch.cdist(x, centroids).argmin(1)
    used, labels = torch.unique(labels, return_inverse=True)
    return centroids[used], labels


def grouped(axis, size, **kw):
    return PalettizationSpec(granularity=PerGroupedChannelGranularity(axis=axis, group_size=size), **kw)


SPECS = {
    "per_tensor_4bit": PalettizationSpec(n_bits=4),
    "grouped_axis0_2bit": grouped(0, 4, n_bits=2),
    "grouped_axis1_vector": grouped(1, 4, n_bits=3, cluster_dim=2),
    "vector_axis0": PalettizationSpec(n_bits=4, cluster_dim=2),
    "lut_int8_symmetric": PalettizationSpec(lut_qspec=QuantizationSpec(dtype="int8")),
    "lut_uint8_asymmetric": PalettizationSpec(lut_qspec=QuantizationSpec(dtype="uint8", qscheme="asymmetric")),
    "lut_float8_e4m3fn": PalettizationSpec(lut_qspec=QuantizationSpec(dtype="float8_e4m3fn")),
    "per_channel_scale_8bit": PalettizationSpec(n_bits=8, enable_per_channel_scale=True),
    "everything": grouped(0, 8, n_bits=2, cluster_dim=2, enable_per_channel_scale=True,
                          lut_qspec=QuantizationSpec(dtype="int8", qscheme="asymmetric")),
}


def palettize(module: nn.Module, name: str, spec: PalettizationSpec, outliers: int = 0):
    """Attach a palettized record to ``module.<name>`` (with ``outliers`` exact weights) and apply it."""
    weight = getattr(module, name)
    record = palettize_tensor(weight, spec, quantile_clusterer, name=name)
    if outliers:
        flat = weight.detach().reshape(-1)
        positions = flat.abs().argsort(descending=True)[:outliers].sort().values
        record = type(record)(**{**{f: getattr(record, f) for f in ("lut", "indices", "spec", "shape", "dtype",
                                                                       "axis", "per_channel_scale", "lut_quant")},
                                 "outliers": SparseOutliers(indices=positions, values=flat[positions].clone())})
    compressed.apply(module, name, record)
    return record


def int8_record(weight: torch.Tensor, per_block: bool = False) -> QuantizedTensor:
    """Symmetric per-channel (or asymmetric per-block-of-4 along axis 1) int8 record of ``weight``."""
    w = weight.detach()
    if per_block:
        blocks = w.reshape(w.shape[0], -1, 4, *w.shape[2:])
        lo, hi = blocks.amin(dim=2).clamp_max(0), blocks.amax(dim=2).clamp_min(0)
        scale = ((hi - lo) / 255).clamp_min(1e-8)
        zp = torch.clamp(torch.round(-128 - lo / scale), -128, 127)
        q = torch.clamp(torch.round(w / scale.repeat_interleave(4, 1)) + zp.repeat_interleave(4, 1), -128, 127)
        return QuantizedTensor(int_data=q.to(torch.int8), scale=scale, zero_point=zp.to(torch.int8),
                               spec=QuantizationSpec(dtype="int8", qscheme="asymmetric"), shape=tuple(w.shape),
                               dtype=w.dtype)
    scale = (w.abs().reshape(w.shape[0], -1).amax(1) / 127).reshape(-1, *([1] * (w.dim() - 1)))
    q = torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8)
    return QuantizedTensor(int_data=q, scale=scale, zero_point=None, spec=QuantizationSpec(dtype="int8"),
                           shape=tuple(w.shape), dtype=w.dtype)


class Net(nn.Module):
    """conv -> relu -> conv -> flatten -> linear, 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 8)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def act(dtype="int8", scheme="symmetric", scale=0.05, zero_point=None):
    spec = QuantizationSpec(dtype=dtype, qscheme=scheme)
    zp = None if zero_point is None else torch.tensor(zero_point, dtype=torch.int8 if dtype.startswith("int") else torch.uint8)
    return ActivationQuant(scale=torch.tensor(scale), zero_point=zp, spec=spec)
