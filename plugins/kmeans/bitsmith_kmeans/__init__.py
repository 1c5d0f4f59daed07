"""bitsmith-kmeans: the ``"kmeans"`` clusterer and ``KMeansPalettizer``.

Use them through bitsmith (``from bitsmith.palettization import KMeansPalettizer``,
``bitsmith.plugins.get("cluster", "kmeans")``); the modules here are
:mod:`.cluster` (the clusterer), :mod:`.scalar` (exact 1-D k-means),
:mod:`.vector` (vector k-means) and :mod:`.palettizer`.
"""

__all__ = ["KMeansPalettizer", "kmeans"]


def __getattr__(name: str):
    if name == "kmeans":
        from .cluster import kmeans

        return kmeans
    if name == "KMeansPalettizer":
        from .palettizer import KMeansPalettizer

        return KMeansPalettizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
