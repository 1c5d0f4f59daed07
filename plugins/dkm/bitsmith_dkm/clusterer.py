"""The ``"dkm"`` clusterer: annealed soft k-means (the DKM assignment, cooled to hard).

A data-free clusterer with the same soft assignment DKM trains with: weighted
k-means++ seeding, then soft k-means updates at a decreasing temperature
(deterministic annealing, which avoids many of the poor local optima of plain
Lloyd iterations), then hard Lloyd iterations to convergence. Works for any
``cluster_dim``; satisfies :class:`bitsmith.protocols.Clusterer` (deterministic for a
given seed, picklable, no empty cluster, at most as many centroids as distinct rows).
It runs on the device of its input (the random draws of the seeding are made on the
CPU, so a seed picks the same rows on every device).
It lets :class:`~bitsmith_dkm.DKMPalettizer` run with ``dkm.init_clusterer: dkm``
when bitsmith-kmeans is not installed.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .soft import EPS, centroids_from, chunks

SEEDING_ROWS = 1 << 16
"""Rows sampled (weighted, without replacement) for k-means++ seeding of large inputs."""


class SoftKMeansClusterer:
    """Annealed soft k-means.

    :param temperatures: annealing schedule, relative to the mean squared gap between
        neighbouring centroids (as :class:`~bitsmith_dkm.DKMOptions` ``temperature``).
    :param soft_iterations: soft updates per temperature.
    :param hard_iterations: at most this many Lloyd iterations at the end.
    :param restarts: independent seedings; the lowest weighted error wins.
    :param chunk: rows per chunk (bounds memory to ``chunk * k``).
    """

    def __init__(self, temperatures: Sequence[float] = (1.0, 0.3, 0.1, 0.03, 0.01), soft_iterations: int = 8,
                 hard_iterations: int = 30, restarts: int = 4, chunk: int = 1 << 18):
        self.temperatures = tuple(float(t) for t in temperatures)
        self.soft_iterations, self.hard_iterations, self.chunk = soft_iterations, hard_iterations, chunk
        self.restarts = restarts

    def __repr__(self) -> str:
        return (f"SoftKMeansClusterer(temperatures={self.temperatures}, soft_iterations={self.soft_iterations}, "
                f"hard_iterations={self.hard_iterations})")

    def __call__(self, x: torch.Tensor, k: int, *, sample_weight: Optional[torch.Tensor] = None,
                 seed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.dim() != 2:
            raise ValueError(f"x: expected a 2-D (n, d) tensor, got shape {tuple(x.shape)}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        w = torch.ones(x.shape[0], device=x.device) if sample_weight is None else \
            torch.as_tensor(sample_weight, dtype=torch.float32, device=x.device)
        w = w.reshape(-1)
        if w.numel() != x.shape[0]:
            raise ValueError(f"sample_weight: expected {x.shape[0]} weights, got {w.numel()}")
        if bool((w < 0).any()) or not torch.isfinite(w).all():
            raise ValueError("sample_weight: must be finite and non-negative")
        if float(w.sum()) <= 0:
            w = torch.ones_like(w)
        distinct, inverse = torch.unique(x, dim=0, return_inverse=True)
        if distinct.shape[0] <= k:
            return distinct, inverse
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        best = None
        for _ in range(max(1, self.restarts)):
            c, labels = self._run(x, w, k, gen)
            cost = float((w * (x - c[labels]).pow(2).sum(-1)).sum())
            if best is None or cost < best[0]:
                best = (cost, c, labels)
        _, c, labels = best
        used = torch.unique(labels)
        remap = torch.full((c.shape[0],), -1, dtype=torch.int64, device=labels.device)
        remap[used] = torch.arange(used.numel(), device=labels.device)
        return c[used].contiguous(), remap[labels]

    def _run(self, x: torch.Tensor, w: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c = self._seed(x, w, k, gen)
        for temperature in self.temperatures:
            for _ in range(self.soft_iterations):
                c = self._soft_update(x, w, c, temperature)
        labels = self._labels(x, c)
        for _ in range(self.hard_iterations):
            num = torch.zeros_like(c).index_add_(0, labels, x * w[:, None])
            den = torch.zeros(c.shape[0], device=x.device).index_add_(0, labels, w)
            c = torch.where(den[:, None] > 0, num / den.clamp_min(EPS)[:, None], c)
            new = self._labels(x, c)
            if torch.equal(new, labels):
                break
            labels = new
        return c, labels

    def _seed(self, x: torch.Tensor, w: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        pool, pw = x, w
        if x.shape[0] > SEEDING_ROWS:
            pick = torch.multinomial((w + EPS).cpu(), SEEDING_ROWS, replacement=False, generator=gen)
            pick = pick.to(x.device)
            pool, pw = x[pick], w[pick]
        first = int(torch.multinomial((pw + EPS).cpu(), 1, generator=gen)[0])
        centers = [pool[first]]
        d2 = (pool - centers[0]).pow(2).sum(-1)
        for _ in range(1, k):
            p = pw * d2
            if float(p.sum()) <= 0:
                break
            nxt = int(torch.multinomial(p.cpu(), 1, generator=gen)[0])
            centers.append(pool[nxt])
            d2 = torch.minimum(d2, (pool - pool[nxt]).pow(2).sum(-1))
        c = torch.stack(centers)
        return c

    @staticmethod
    def _d2(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (x[:, None, :] - c[None]).pow(2).sum(-1)

    def _soft_update(self, x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, temperature: float) -> torch.Tensor:
        gaps = self._d2(c, c)
        gaps = torch.where(gaps > 0, gaps, torch.full_like(gaps, float("inf"))).min(-1).values
        finite = gaps[torch.isfinite(gaps)]
        spacing = float(finite.mean()) if finite.numel() else 1.0
        inv_temp = 1.0 / (temperature * spacing)
        num, den = torch.zeros_like(c), c.new_zeros(c.shape[0])
        for part in chunks(x.shape[0], self.chunk):
            a = torch.softmax(-self._d2(x[part], c) * inv_temp, dim=-1) * w[part, None]
            num += a.T @ x[part]
            den += a.sum(0)
        return centroids_from(num, den, c)

    def _labels(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
        for part in chunks(x.shape[0], self.chunk):
            out[part] = self._d2(x[part], c).argmin(-1)
        return out
