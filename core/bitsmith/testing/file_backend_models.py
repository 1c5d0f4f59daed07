"""Test helpers for file export backends: a small conv/linear model, a deterministic clusterer, a quantizer.

They build compressed records directly (no algorithm plugin); shared by the ONNX, Core ML and
safetensors backend tests, whose conftests wrap them as fixtures.
"""

from __future__ import annotations

import torch
from torch import nn

from bitsmith import compressed
from bitsmith.compressed import QuantizedTensor
from bitsmith.config import PerBlockGranularity, PerChannelGranularity, QuantizationScheme, QuantizationSpec


class Net(nn.Module):
    """Conv -> BN -> ReLU -> Conv (16 -> 32 channels) -> flatten -> Linear(32*4*4 -> 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def make_net(seed: int = 0) -> Net:
    """A deterministic :class:`Net` in eval mode with non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
    return net.eval()


def lloyd(x: torch.Tensor, k: int, *, sample_weight=None, seed=None):
    """Deterministic k-means (quantile init + 4 Lloyd steps) satisfying the Clusterer protocol; fast, not optimal."""
    x = x.float()
    order = x[:, 0].argsort()
    centroids = x[order[torch.linspace(0, x.shape[0] - 1, min(k, x.shape[0])).round().long()]].unique(dim=0)
    for _ in range(4):
        labels = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=centroids.shape[0]).float()
        keep = counts > 0
        centroids = sums[keep] / counts[keep, None]
    return centroids, _nearest(x, centroids)


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # scalar: sorted centroids, bucketize against midpoints
        order = centroids[:, 0].argsort()
        sorted_c = centroids[order, 0]
        return order[torch.bucketize(x[:, 0], (sorted_c[1:] + sorted_c[:-1]) / 2)]
    return torch.cdist(x, centroids).argmin(1)


def quantize_record(weight: torch.Tensor, spec: QuantizationSpec) -> QuantizedTensor:
    """A :class:`QuantizedTensor` of ``weight`` (min/max ranges), independent of any quantizer plugin."""
    shape = tuple(weight.shape)
    w = weight.detach().float()
    gran = spec.granularity
    if isinstance(gran, PerChannelGranularity):
        dims = tuple(d for d in range(w.dim()) if d != gran.axis)
        lo, hi = w.amin(dims, keepdim=True), w.amax(dims, keepdim=True)
    elif isinstance(gran, PerBlockGranularity):
        a, bs = gran.axis, gran.block_size
        blocked = w.reshape(*shape[:a], shape[a] // bs, bs, *shape[a + 1:])
        lo, hi = blocked.amin(a + 1), blocked.amax(a + 1)
    else:
        lo, hi = w.amin().reshape([1] * w.dim()), w.amax().reshape([1] * w.dim())
    qmin, qmax = spec.quant_range
    if spec.qscheme is QuantizationScheme.SYMMETRIC:
        scale = (torch.maximum(lo.abs(), hi.abs()) / ((qmax - qmin) / 2)).clamp_min(1e-8)
        zp = None if qmin < 0 else torch.full_like(scale, (qmax + 1) // 2)
    else:
        lo, hi = lo.clamp_max(0), hi.clamp_min(0)
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8)
        zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    rec = QuantizedTensor(int_data=torch.zeros(1), scale=scale, zero_point=None, spec=spec, shape=shape,
                          dtype=weight.dtype)
    zfull = 0 if zp is None else rec.expanded(zp)
    q = torch.clamp(torch.round(w / rec.expanded(scale)) + zfull, qmin, qmax)
    int_dtype = torch.int8 if qmin < 0 else torch.uint8
    return QuantizedTensor(int_data=q.to(int_dtype), scale=scale, zero_point=None if zp is None else zp.to(int_dtype),
                           spec=spec, shape=shape, dtype=weight.dtype)


def apply_quantized(model: nn.Module, name: str, spec: QuantizationSpec) -> QuantizedTensor:
    """Quantize ``model.<name>.weight`` with :func:`quantize_record` and apply the record."""
    module = model.get_submodule(name)
    record = quantize_record(module.weight, spec)
    compressed.apply(module, "weight", record)
    return record
