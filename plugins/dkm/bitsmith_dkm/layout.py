"""Between a weight tensor and the ``(G, n, d)`` vectors DKM clusters, in the core record layout.

The layout is the one :class:`bitsmith.compressed.PalettizedTensor` documents: vectors
of ``cluster_dim`` consecutive channels along ``axis``; LUT ``g`` serves channels
``g*group_size … (g+1)*group_size-1`` along ``axis``; the index of a vector sits at
the weight's position with ``shape[axis]`` divided by ``cluster_dim``. Per-channel
scales (when enabled) divide the weight along axis 0 as in
:func:`bitsmith.palettization.palettize_tensor`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from attrs import define

from bitsmith.config import PalettizationSpec, PerGroupedChannelGranularity


@define(frozen=True)
class Layout:
    """How one tensor of ``shape`` splits into ``groups`` x ``rows`` vectors of length ``dim``."""

    shape: tuple[int, ...]
    axis: int
    dim: int
    group_size: int

    @classmethod
    def of(cls, shape: Sequence[int], spec: PalettizationSpec) -> "Layout":
        """The layout ``spec`` gives a tensor of ``shape``."""
        gran = spec.granularity
        grouped = isinstance(gran, PerGroupedChannelGranularity)
        axis = gran.axis if grouped else 0
        channels = shape[axis]
        return cls(tuple(shape), axis, spec.cluster_dim, gran.group_size if grouped else channels)

    @property
    def groups(self) -> int:
        """Number of LUTs."""
        return self.shape[self.axis] // self.group_size

    @property
    def rest(self) -> list[int]:
        """The shape without ``axis``."""
        return [s for i, s in enumerate(self.shape) if i != self.axis]

    @property
    def rows(self) -> int:
        """Vectors per group."""
        return self.group_size // self.dim * math.prod(self.rest)

    def to_vectors(self, w: torch.Tensor) -> torch.Tensor:
        """``(G, rows, dim)`` vectors of ``w``."""
        channels = self.shape[self.axis]
        moved = w.movedim(self.axis, 0).reshape(channels // self.dim, self.dim, -1)
        return moved.permute(0, 2, 1).reshape(self.groups, self.rows, self.dim)

    def from_vectors(self, v: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_vectors`."""
        channels = self.shape[self.axis]
        rows = v.reshape(channels // self.dim, -1, self.dim).permute(0, 2, 1)
        return rows.reshape(channels, *self.rest).movedim(0, self.axis)

    def indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Record index tensor (uint8) from ``(G, rows)`` labels."""
        channels = self.shape[self.axis]
        return labels.reshape(channels // self.dim, *self.rest).movedim(0, self.axis).to(torch.uint8).contiguous()


def channel_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scale as the core computes it: max |w| per index of axis 0, 1 where 0."""
    scale = w.detach().reshape(w.shape[0], -1).abs().amax(dim=1)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def apply_scale(w: torch.Tensor, scale: Optional[torch.Tensor], inverse: bool = False) -> torch.Tensor:
    """``w / scale`` (``inverse``) or ``w * scale`` broadcast along axis 0; ``w`` when ``scale`` is None."""
    if scale is None:
        return w
    s = scale.reshape(-1, *([1] * (w.dim() - 1)))
    return w / s if inverse else w * s
