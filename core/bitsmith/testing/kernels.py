"""A tiny deterministic clusterer for tests that need a ``"kmeans"`` stand-in without the kmeans plugin."""

from __future__ import annotations

from typing import Any, Optional

import torch


def quantile_clusterer(x: Any, k: int, *, sample_weight: Optional[torch.Tensor] = None,
                       seed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``Clusterer``: centroids at evenly spaced quantiles of the first coordinate, nearest assignment.

    Fewer distinct rows than ``k`` become the centroids themselves; unused centroids
    are dropped (no empty cluster). Ignores ``sample_weight`` and ``seed``.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    uniq = torch.unique(x, dim=0)
    if uniq.shape[0] <= k:
        centroids = uniq
    else:
        order = torch.argsort(x[:, 0])
        centroids = torch.unique(x[order[torch.linspace(0, x.shape[0] - 1, k).round().long()]], dim=0)
    labels = torch.cdist(x, centroids).argmin(1)
    used, labels = torch.unique(labels, return_inverse=True)
    return centroids[used], labels
