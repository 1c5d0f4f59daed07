"""The ``"kmeans"`` clusterer (:class:`bitsmith.protocols.Clusterer`).

Rows of width 1 go to the exactly optimal scalar kernel (:mod:`.scalar`), wider
rows to vector k-means (:mod:`.vector`). Other plugins reach it through the
registry: ``bitsmith.plugins.get("cluster", "kmeans")``.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from .scalar import kmeans_1d
from .vector import kmeans_nd

ArrayLike = Union[torch.Tensor, np.ndarray]


def kmeans(x: ArrayLike, k: int, *, sample_weight: Optional[ArrayLike] = None,
           seed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``x`` into at most ``k`` centroids.

    :param x: ``(n, d)`` (or ``(n,)`` for ``d = 1``) float values, all finite.
    :param k: maximum number of centroids (the LUT size), >= 1.
    :param sample_weight: ``(n,)`` non-negative importance of each row (its squared
        error is multiplied by it); ``None`` or all zeros: every row counts once.
    :param seed: seed of the vector k-means++ draws. ``None`` draws it from the global
        numpy and torch generators, so ``np.random.seed(s); torch.manual_seed(s)``
        reproduces a run (seed 003). Scalar clustering (``d = 1``) is exact and ignores it.
    :returns: ``(centroids, labels)``: float32 ``(m, d)`` with ``m <= k``, never an
        empty cluster (``m < k`` when there are at most ``k`` distinct rows, which are
        then kept exactly); int64 ``(n,)`` labels in ``[0, m)``.
    :raises ValueError: bad shapes, ``k`` or weights, NaN/infinite values.

    ``d = 1`` is exactly optimal for the weighted squared error of the fp16-rounded
    values (histogram + divide-and-conquer dynamic program) and deterministic.
    """
    xt = torch.as_tensor(x).detach().cpu()
    if xt.dim() == 1:
        xt = xt.unsqueeze(1)
    if xt.dim() != 2 or not xt.is_floating_point():
        raise ValueError(f"x: expected a 2-D (n, d) float tensor, got shape {tuple(xt.shape)} dtype {xt.dtype}")
    n, d = xt.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if n == 0 or d == 0:
        raise ValueError(f"x: cannot cluster an empty tensor of shape {tuple(xt.shape)}")
    sw = None
    if sample_weight is not None:
        sw = torch.as_tensor(sample_weight).detach().cpu().reshape(-1).to(torch.float64)
        if sw.numel() != n:
            raise ValueError(f"sample_weight: expected {n} weights (one per row), got {sw.numel()}")
    if d == 1:
        centroids, labels = kmeans_1d(xt.reshape(-1).to(torch.float32).numpy(), int(k),
                                      None if sw is None else sw.numpy())
        return torch.from_numpy(centroids).reshape(-1, 1), torch.from_numpy(labels)
    xf = xt.to(torch.float32)
    if not bool(torch.isfinite(xf).all()):
        raise ValueError("x: contains NaN or infinite values")
    if sw is not None:
        if not bool(torch.isfinite(sw).all()):
            raise ValueError("sample_weight: contains NaN or infinite values")
        if bool((sw < 0).any()):
            raise ValueError("sample_weight: weights must be non-negative")
        if not bool((sw > 0).any()):
            sw = None
    generator = torch.Generator().manual_seed(_resolve_seed(seed))
    return kmeans_nd(xf, int(k), sw, generator)


def _resolve_seed(seed: Optional[int]) -> int:
    """A 32-bit generator seed mixing every bit of ``seed``, or of draws from the global numpy and torch
    generators when ``seed`` is None (seed 003 semantics). torch's CPU generator keeps only 32 seed bits."""
    if seed is not None:
        entropy = [int(seed) & 0xFFFF_FFFF_FFFF_FFFF]
    else:
        entropy = [int(np.random.randint(0, 2**31 - 1)), int(torch.randint(0, 2**31 - 1, (1,)).item())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
