"""A complete third-party plugin: the "uniform" clusterer and palettizer.

The clusterer spreads ``k`` LUT entries evenly between the minimum and maximum of
the data (a uniform quantization grid, no k-means) and assigns each value to the
nearest entry; unused entries are dropped so there is never an empty cluster.
"""

from __future__ import annotations

import bitsmith
from bitsmith.palettization import Palettizer


def uniform_grid(x, k, *, sample_weight=None, seed=None):
    """Cluster rows of ``x`` onto an even grid of ``k`` points per dimension's range (``Clusterer`` protocol)."""
    import torch

    x = torch.as_tensor(x, dtype=torch.float32)
    lo, hi = x.min(0).values, x.max(0).values
    steps = torch.linspace(0, 1, k)[:, None]
    grid = lo + steps * (hi - lo)
    labels = torch.cdist(x, grid).argmin(1)
    used, labels = torch.unique(labels, return_inverse=True)
    return grid[used], labels


class UniformPalettizer(Palettizer):
    """Palettizer that builds LUTs on a uniform grid."""

    algorithm = "uniform"


@bitsmith.hookimpl
def cluster(register):
    """Register the "uniform" clusterer."""
    register("uniform", uniform_grid)


@bitsmith.hookimpl
def palettizer(register):
    """Register ``UniformPalettizer`` as "uniform"."""
    register("uniform", UniformPalettizer)
