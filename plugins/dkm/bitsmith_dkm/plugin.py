"""Entry point of bitsmith-dkm: registers the palettizer and the annealed soft k-means clusterer."""

from __future__ import annotations

import bitsmith


@bitsmith.hookimpl
def cluster(register):
    """Register ``"dkm"``: annealed soft k-means (:class:`~bitsmith_dkm.SoftKMeansClusterer`)."""
    from .clusterer import SoftKMeansClusterer

    register("dkm", SoftKMeansClusterer())


@bitsmith.hookimpl
def palettizer(register):
    """Register ``"dkm"``: :class:`~bitsmith_dkm.DKMPalettizer`."""
    from .palettizer import DKMPalettizer

    register("dkm", DKMPalettizer)
