"""Entry point of bitsmith-sensitive-kmeans: registers the clusterer and the palettizer."""

from __future__ import annotations

import bitsmith


@bitsmith.hookimpl
def cluster(register):
    """Register ``"sensitive_kmeans"``: the kmeans kernel driven by per-weight sensitivities."""
    from .clusterer import SensitiveKMeansClusterer

    register("sensitive_kmeans", SensitiveKMeansClusterer())


@bitsmith.hookimpl
def palettizer(register):
    """Register ``"sensitive_kmeans"``: :class:`~bitsmith_sensitive_kmeans.SKMPalettizer`."""
    from .palettizer import SKMPalettizer

    register("sensitive_kmeans", SKMPalettizer)
