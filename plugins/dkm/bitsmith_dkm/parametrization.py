"""The ``torch.nn.utils.parametrize`` module that puts DKM between a weight and its layer.

In training mode the layer sees the soft reconstruction (attention over centroids,
:func:`~bitsmith_dkm.soft.dkm_reconstruct`), or with ``straight_through`` the hard
weights with the soft gradients. In eval mode it sees exactly what export produces:
every vector snapped to its nearest centroid (after the same centroid updates, and
through the LUT quantization of the spec), i.e. ``record(weight).dequantize()``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bitsmith.compressed import PalettizedTensor
from bitsmith.config import PalettizationSpec
from bitsmith.palettization.tensor import quantize_lut

from .config import DKMOptions
from .layout import Layout, apply_scale, channel_scale
from .soft import dkm_reconstruct, gather, nearest, refine


def centroid_spacing(lut: torch.Tensor) -> torch.Tensor:
    """Mean squared distance from each centroid to its nearest distinct neighbour, per LUT ``(G,)``.

    Falls back to the mean squared centroid norm (or 1) when a LUT has a single distinct value.
    """
    g, k, _ = lut.shape
    d = (lut.double().unsqueeze(2) - lut.double().unsqueeze(1)).pow(2).sum(-1)
    d = torch.where(d > 0, d, torch.full_like(d, float("inf")))
    nn_dist = d.min(-1).values  # (G, k); inf where a centroid has no distinct neighbour
    finite = torch.isfinite(nn_dist)
    mean = torch.where(finite, nn_dist, torch.zeros_like(nn_dist)).sum(1) / finite.sum(1).clamp_min(1)
    fallback = lut.double().pow(2).sum(-1).mean(1)
    fallback = torch.where(fallback > 0, fallback, torch.ones_like(fallback))
    return torch.where(finite.any(1), mean, fallback).float()


class DKMParametrization(nn.Module):
    """Differentiable k-means of one weight tensor (``parametrize`` module).

    :param spec: the tensor's ``PalettizationSpec``.
    :param shape: the weight's shape.
    :param init_lut: ``(G, 2**n_bits, cluster_dim)`` initial centroids (in the scaled
        domain when ``spec.enable_per_channel_scale``), e.g. the k-means LUT.
    :param options: :class:`~bitsmith_dkm.DKMOptions`.
    """

    def __init__(self, spec: PalettizationSpec, shape: tuple[int, ...], init_lut: torch.Tensor, options: DKMOptions):
        super().__init__()
        self.spec, self.options = spec, options
        self.layout = Layout.of(shape, spec)
        lut = init_lut.detach().to(torch.float32).clone()
        expected = (self.layout.groups, spec.n_clusters, spec.cluster_dim)
        if tuple(lut.shape) != expected:
            raise ValueError(f"init_lut: expected shape {expected}, got {tuple(lut.shape)}")
        if options.train_centroids:
            self.centroids = nn.Parameter(lut)
        else:
            self.register_buffer("centroids", lut)
        spacing = centroid_spacing(lut)
        self.register_buffer("inv_temp", (1.0 / (options.temperature * spacing)).reshape(-1, 1, 1))

    @property
    def rows_per_chunk(self) -> int:
        """Rows of each group per chunk so that a chunk holds about ``chunk_size`` weights."""
        return max(1, self.options.chunk_size // (self.layout.groups * self.spec.cluster_dim))

    def _vectors(self, weight: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        w = weight.to(torch.promote_types(weight.dtype, torch.float32))  # fp16/bf16 weights: DKM runs in fp32
        scale = channel_scale(w) if self.spec.enable_per_channel_scale else None
        return self.layout.to_vectors(apply_scale(w, scale, inverse=True)), scale

    def _hard(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        lut = c if self.spec.lut_qspec is None else quantize_lut(c, self.spec.lut_qspec)[0]
        return gather(lut, nearest(x, lut, self.rows_per_chunk))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Soft (training) or snapped (eval) weights, same shape and dtype as ``weight``."""
        x, scale = self._vectors(weight)
        c0 = self.centroids.to(device=x.device, dtype=x.dtype)
        inv_temp = self.inv_temp.to(device=x.device, dtype=x.dtype)
        if not self.training:
            y = self._hard(x.detach(), refine(x.detach(), c0.detach(), inv_temp, self.options.iterations,
                                              self.rows_per_chunk))
        else:
            y, final = dkm_reconstruct(x, c0, inv_temp, self.options.iterations,
                                       memory_saving=self.options.memory_saving, rows=self.rows_per_chunk)
            if self.options.straight_through:
                y = y + (self._hard(x.detach(), final) - y).detach()
        # contiguous: convolutions take their fast (mkldnn) path only for contiguous weights
        return apply_scale(self.layout.from_vectors(y), scale).to(weight.dtype).contiguous()

    @torch.no_grad()
    def effective_centroids(self, weight: torch.Tensor) -> torch.Tensor:
        """The LUT the current weight snaps to: the centroids after ``iterations`` soft updates."""
        x, _ = self._vectors(weight)
        return refine(x, self.centroids.to(device=x.device, dtype=x.dtype),
                      self.inv_temp.to(device=x.device, dtype=x.dtype), self.options.iterations, self.rows_per_chunk)

    @torch.no_grad()
    def record(self, weight: torch.Tensor) -> PalettizedTensor:
        """Hard assignment of ``weight`` (the unparametrized tensor) as a :class:`PalettizedTensor`.

        The centroid updates and the nearest-centroid search run on the weight's
        device (no copy of the weight to the CPU); the record's tensors are on the
        CPU, like every record the core builds. The small LUT is quantized on the CPU.
        """
        x, scale = self._vectors(weight.detach())
        c = refine(x, self.centroids.detach().to(device=x.device, dtype=x.dtype),
                   self.inv_temp.to(device=x.device, dtype=x.dtype), self.options.iterations, self.rows_per_chunk)
        lut, lut_quant = c.cpu(), None
        if self.spec.lut_qspec is not None:
            lut, lut_quant = quantize_lut(lut, self.spec.lut_qspec)
        labels = nearest(x, lut.to(device=x.device, dtype=x.dtype), self.rows_per_chunk)
        return PalettizedTensor(lut=lut.float(), indices=self.layout.indices(labels).cpu(), spec=self.spec,
                                shape=tuple(weight.shape), dtype=weight.dtype, axis=self.layout.axis,
                                per_channel_scale=None if scale is None else scale.float().cpu(), lut_quant=lut_quant)

    def extra_repr(self) -> str:
        o = self.options
        return (f"{self.spec.describe() if hasattr(self.spec, 'describe') else self.spec}, groups={self.layout.groups}, "
                f"temperature={o.temperature}, iterations={o.iterations}, memory_saving={o.memory_saving}, "
                f"straight_through={o.straight_through}")
