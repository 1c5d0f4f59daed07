"""``KMeansPalettizer``: data-free post-training k-means palettization (seeds 000, 002, 003)."""

from __future__ import annotations

from typing import ClassVar

from bitsmith.palettization import Palettizer


class KMeansPalettizer(Palettizer):
    """Palettize a model's weights with k-means, one LUT per tensor or per channel group.

    ``KMeansPalettizer(model, config).prepare(example_inputs)`` returns a copy of the
    model whose weights are replaced by their palettized values (the copy shares the
    weights it replaces until they are replaced, so it costs at most one model;
    ``inplace=True`` modifies ``model`` layer by layer, for models that fit in memory
    only once); ``finalize(backend="coreai")`` exports it; ``report()``
    tabulates sizes and SQNR per layer. Everything model-level (spec resolution,
    checks that name the layer, tied weights clustered once, ``num_workers``/
    ``executor`` parallelism identical to the sequential path, progress bar) is the
    core's :class:`bitsmith.palettization.Palettizer`; this class selects the
    registered ``"kmeans"`` clusterer: exactly optimal scalar k-means on the
    fp16-rounded weights, k-means++ + Lloyd for ``cluster_dim > 1``.
    """

    algorithm: ClassVar[str] = "kmeans"
