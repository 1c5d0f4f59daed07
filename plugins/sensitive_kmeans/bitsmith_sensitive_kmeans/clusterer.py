"""The ``"sensitive_kmeans"`` clusterer: the exact weighted k-means kernel driven by sensitivities.

The kernel is the ``"kmeans"`` clusterer of bitsmith-kmeans, looked up in the plugin
registry (never imported). This wrapper adds what sensitivity weights need:

* weights are required (they *are* the algorithm) and checked before any work;
* a group whose weights are all zero (no gradient reached it) falls back to uniform
  weights, i.e. plain k-means, instead of an arbitrary solution;
* labels are re-assigned to the nearest returned centroid, so rows of zero weight
  (insensitive weights, or outliers kept exact elsewhere) still get the closest
  LUT entry; for rows of positive weight this never increases the weighted error.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from bitsmith import plugins
from bitsmith.errors import PluginError

KERNEL = "kmeans"
"""Registry name of the weighted k-means kernel this clusterer delegates to."""


def kernel_from(registry: Optional[plugins.Registry] = None) -> Any:
    """The ``"kmeans"`` kernel of ``registry`` (default registry if ``None``), or a :class:`PluginError` saying what to install."""
    try:
        return (registry or plugins.default_registry()).get("cluster", KERNEL)
    except PluginError as exc:
        raise PluginError(f"sensitive_kmeans clusters with the exact weighted k-means kernel of bitsmith-kmeans "
                          f"(clusterer {KERNEL!r}), which is not available; install it with: "
                          f"pip install bitsmith-kmeans\n{exc}") from None


class SensitiveKMeansClusterer:
    """Weighted k-means whose sample weights are per-weight sensitivities (diagonal Fisher).

    Satisfies :class:`bitsmith.protocols.Clusterer` except that ``sample_weight`` is
    required. ``kernel`` is the ``"kmeans"`` clusterer to delegate to; ``None``
    looks it up in the default registry at call time (which also works in worker
    processes). :meth:`with_kernel` binds another registry's kernel.
    """

    def __init__(self, kernel: Any = None):
        self.kernel = kernel

    def with_kernel(self, kernel: Any) -> "SensitiveKMeansClusterer":
        """A copy of this clusterer that delegates to ``kernel``."""
        return SensitiveKMeansClusterer(kernel)

    def __call__(self, x: torch.Tensor, k: int, *, sample_weight: Optional[torch.Tensor] = None,
                 seed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.dim() != 2:
            raise ValueError(f"x: expected a 2-D (n, d) tensor, got shape {tuple(x.shape)}")
        if sample_weight is None:
            raise ValueError("sample_weight: sensitive_kmeans needs per-row sensitivities (e.g. from "
                             "SKMPalettizer.compute_sensitivity); use the 'kmeans' clusterer for unweighted clustering")
        w = torch.as_tensor(sample_weight, dtype=torch.float32).reshape(-1)
        if w.numel() != x.shape[0]:
            raise ValueError(f"sample_weight: expected {x.shape[0]} weights (one per row of x), got {w.numel()}")
        if not torch.isfinite(w).all() or bool((w < 0).any()):
            raise ValueError("sample_weight: sensitivities must be finite and non-negative")
        if float(w.sum()) <= 0:
            w = torch.ones_like(w)
        kernel = self.kernel if self.kernel is not None else kernel_from()
        centroids, _ = kernel(x, k, sample_weight=w, seed=seed)
        centroids = torch.as_tensor(centroids, dtype=torch.float32).reshape(-1, x.shape[1])
        labels = nearest(x, centroids)
        used = torch.unique(labels)
        if used.numel() < centroids.shape[0]:  # a centroid no row is nearest to: drop it (no empty clusters)
            remap = torch.full((centroids.shape[0],), -1, dtype=torch.int64)
            remap[used] = torch.arange(used.numel())
            centroids, labels = centroids[used], remap[labels]
        return centroids, labels

    def __repr__(self) -> str:
        return f"SensitiveKMeansClusterer(kernel={self.kernel!r})"


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 1 << 18) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean, ties to the lower index) for every row of ``x``."""
    out = torch.empty(x.shape[0], dtype=torch.int64)
    for start in range(0, x.shape[0], chunk):
        rows = x[start:start + chunk]
        out[start:start + chunk] = (rows[:, None, :] - centroids[None]).pow(2).sum(-1).argmin(1)
    return out
