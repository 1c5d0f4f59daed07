"""Vector k-means (``cluster_dim > 1``): weighted k-means++ seeding + Lloyd iterations in torch.

Deterministic for a given ``torch.Generator``: the only randomness is the k-means++
sampling, drawn from that generator. Distances to all centroids are computed in
row chunks (``|c|^2 - 2 x.c``, a matrix product) so memory stays at
``chunk x k`` floats. A centroid that loses all its (weighted) members is re-seeded
at the point farthest from its current centroid. Centroid sums are accumulated in
float64. When k-means++ finds that every point (of positive weight) already
coincides with a chosen centroid, fewer than ``k`` centroids are returned and the
clustering is exact.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

MAX_ITER = 100
"""Lloyd iterations at most."""

TOL = 1e-4
"""Stop when the total squared centroid shift is below ``TOL`` times the mean per-dimension variance."""

_DIST_ELEMENTS = 1 << 22


def kmeans_nd(x: torch.Tensor, k: int, sample_weight: Optional[torch.Tensor], generator: torch.Generator, *,
              max_iter: int = MAX_ITER, tol: float = TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means of the rows of ``x``.

    :param x: float32 ``(n, d)``, finite.
    :param k: maximum number of centroids.
    :param sample_weight: float64 ``(n,)`` non-negative, not all zero, or ``None``.
    :param generator: source of the k-means++ draws.
    :returns: ``(centroids, labels)``: float32 ``(m, d)`` with ``m <= k`` (no empty
        cluster) and int64 ``(n,)``.
    """
    x = (x.to(torch.float32) + 0.0).contiguous()  # + 0.0 turns -0.0 into +0.0
    n, d = x.shape
    w = torch.ones(n, dtype=torch.float64) if sample_weight is None else sample_weight.to(torch.float64)
    centroids, closest, exact = _kmeans_pp(x, w, min(k, n), generator)
    if exact:
        return _compact(x, w, closest, centroids.shape[0])
    var = x.double().var(dim=0, unbiased=False).mean().item() if n > 1 else 0.0
    threshold = tol * var
    labels = closest
    for _ in range(max_iter):
        labels, mind2 = _assign(x, centroids)
        updated, empty = _means(x, w, labels, centroids.shape[0])
        if empty.any():
            updated[empty] = _farthest(x, w, mind2, int(empty.sum()))
        shift = (updated - centroids.double()).pow(2).sum().item()
        centroids = updated.to(torch.float32)
        if shift <= threshold:
            break
    labels, _ = _assign(x, centroids)
    return _compact(x, w, labels, centroids.shape[0])


def _kmeans_pp(x: torch.Tensor, w: torch.Tensor, k: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """k-means++ seeding; returns centroids, each row's nearest seed and whether that is already exact."""
    n = x.shape[0]
    chosen = [_sample(w, generator)]
    d2 = (x - x[chosen[0]]).pow(2).sum(1).double()
    closest = torch.zeros(n, dtype=torch.int64)
    while len(chosen) < k:
        score = w * d2
        if not bool((score > 0).any()):
            return x[chosen].clone(), closest, True
        idx = _sample(score, generator)
        new = (x - x[idx]).pow(2).sum(1).double()
        nearer = new < d2
        closest[nearer] = len(chosen)
        d2 = torch.where(nearer, new, d2)
        chosen.append(idx)
    return x[chosen].clone(), closest, not bool(((w * d2) > 0).any())


def _sample(p: torch.Tensor, generator: torch.Generator) -> int:
    """Index drawn with probability proportional to ``p`` (float64, >= 0, positive sum)."""
    cdf = torch.cumsum(p, 0)
    r = torch.rand(1, generator=generator, dtype=torch.float64) * cdf[-1]
    return min(int(torch.searchsorted(cdf, r, right=True).item()), p.numel() - 1)


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row and the squared distance to it, in row chunks."""
    n = x.shape[0]
    chunk = max(1, _DIST_ELEMENTS // max(1, centroids.shape[0]))
    cn = centroids.pow(2).sum(1)
    labels = torch.empty(n, dtype=torch.int64)
    mind2 = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, chunk):
        xc = x[start:start + chunk]
        dist = torch.addmm(cn.unsqueeze(0), xc, centroids.t(), alpha=-2.0)
        best, arg = dist.min(dim=1)
        labels[start:start + chunk] = arg
        mind2[start:start + chunk] = (best + xc.pow(2).sum(1)).clamp_min(0.0)
    return labels, mind2


def _means(x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted means per label (float64) and which labels have no weight."""
    lab = labels.numpy()
    wn = w.numpy()
    wsum = np.bincount(lab, weights=wn, minlength=m)
    sums = np.stack([np.bincount(lab, weights=wn * x[:, j].numpy(), minlength=m) for j in range(x.shape[1])], 1)
    empty = wsum <= 0
    means = sums / np.where(empty, 1.0, wsum)[:, None]
    return torch.from_numpy(means), torch.from_numpy(empty)


def _farthest(x: torch.Tensor, w: torch.Tensor, mind2: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` rows of positive weight farthest from their centroid (ties: lowest index)."""
    score = torch.where(w > 0, mind2.double(), torch.full_like(w, -1.0))
    order = torch.sort(score, descending=True, stable=True).indices[:count]
    return x[order].double()


def _compact(x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Final centroids as the means of their members; clusters without members are dropped."""
    lab = labels.numpy()
    members = np.bincount(lab, minlength=m)
    keep = members > 0
    wsum = np.bincount(lab, weights=w.numpy(), minlength=m)
    sums = np.stack([np.bincount(lab, weights=w.numpy() * x[:, j].numpy(), minlength=m) for j in range(x.shape[1])], 1)
    counts_only = np.stack([np.bincount(lab, weights=x[:, j].numpy(), minlength=m) for j in range(x.shape[1])], 1)
    weighted = wsum > 0
    means = np.where(weighted[:, None], sums / np.where(weighted, wsum, 1.0)[:, None],
                     counts_only / np.maximum(members, 1)[:, None])
    remap = np.cumsum(keep) - 1
    return torch.from_numpy(means[keep].astype(np.float32)), torch.from_numpy(remap[lab].astype(np.int64))
