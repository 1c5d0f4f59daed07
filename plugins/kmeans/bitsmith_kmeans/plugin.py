"""Registers the ``"kmeans"`` clusterer and the ``"kmeans"`` palettizer (``KMeansPalettizer``)."""

from bitsmith import hookimpl


@hookimpl
def cluster(register):
    """Register ``"kmeans"``: exact 1-D k-means on fp16-rounded values; k-means++ + Lloyd for vectors."""
    from .cluster import kmeans

    register("kmeans", kmeans)


@hookimpl
def palettizer(register):
    """Register ``"kmeans"``: :class:`bitsmith_kmeans.palettizer.KMeansPalettizer`."""
    from .palettizer import KMeansPalettizer

    register("kmeans", KMeansPalettizer)
