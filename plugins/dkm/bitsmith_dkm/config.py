"""Config of :class:`~bitsmith_dkm.DKMPalettizer`: a ``KMeansPalettizerConfig`` plus DKM options.

Which tensors get which ``PalettizationSpec`` (bits, granularity, cluster_dim,
per-channel scale, LUT dtype) is decided exactly as for k-means (seed 003); the
training-time options live under ``dkm:``::

    dkm_palettization_config:
      global_config: {op_state_spec: {weight: {n_bits: 2}}}
      dkm: {temperature: 0.05, iterations: 1, memory_saving: true}

Built through the core converter (``bitsmith.config.load``/``dump``/``from_dict``):
unknown keys and bad values fail with their dotted path, e.g.
``dkm.temperature: -1.0 must be > 0``.
"""

from __future__ import annotations

from typing import ClassVar, Optional

from attrs import define, field

from bitsmith.config import KMeansPalettizerConfig

MAX_ITERATIONS = 50


def _positive_number(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name}: expected a positive number, got {value!r}")
    if not value > 0:
        raise ValueError(f"{attribute.name}: {value!r} must be > 0")


def _iterations(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name}: expected an integer in 0..{MAX_ITERATIONS}, got {value!r}")
    if not 0 <= value <= MAX_ITERATIONS:
        raise ValueError(f"{attribute.name}: {value!r} is not in 0..{MAX_ITERATIONS}")


def _positive_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name}: expected a positive integer, got {value!r}")


def _name(instance, attribute, value) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{attribute.name}: expected a registered clusterer name, got {value!r}")


@define(kw_only=True)
class DKMOptions:
    """Training-time options of differentiable k-means.

    :param temperature: softness of the assignment. Distances are divided by
        ``temperature`` times the mean squared gap between neighbouring centroids
        (measured once at ``prepare()``), so it is scale-free: a weight sitting on a
        centroid gives its neighbour ``exp(-1/temperature)`` of the attention of its
        own centroid; a weight half-way between them splits evenly. Lower is
        harder. Default 0.05.
    :param iterations: soft k-means updates of the centroids inside every forward
        pass (differentiable, as in the DKM paper), starting from the learnable
        centroids; ``0`` (default) uses the learnable centroids directly, which
        fine-tuned as well or better in our runs at a fraction of the cost (each
        update is one more pass of attention over all weights).
    :param train_centroids: centroids are ``nn.Parameter`` s the optimizer updates
        (default); ``False`` keeps them as buffers (fixed unless ``iterations`` > 0).
    :param straight_through: the forward pass uses the hard (nearest-centroid)
        weights the export will use, while gradients flow through the soft
        assignment. Default False (soft weights in training, as in the paper).
    :param memory_saving: compute attention in chunks with a custom autograd
        Function that recomputes each chunk in backward; no ``N x 2**n_bits`` matrix
        is kept (slower: the attention is computed twice). Default False.
    :param chunk_size: weights per chunk in memory-saving mode (and for the hard
        assignment). Default 2**20.
    :param init_clusterer: registered clusterer that initialises the centroids:
        ``"kmeans"`` (bitsmith-kmeans, default) or ``"dkm"`` (this dist's annealed
        soft k-means) or any other registered name.
    """

    temperature: float = field(default=0.05, validator=_positive_number)
    iterations: int = field(default=0, validator=_iterations)
    train_centroids: bool = True
    straight_through: bool = False
    memory_saving: bool = False
    chunk_size: int = field(default=1 << 20, validator=_positive_int)
    init_clusterer: str = field(default="kmeans", validator=_name)


@define(kw_only=True)
class DKMPalettizerConfig(KMeansPalettizerConfig):
    """``KMeansPalettizerConfig`` (same fields, same precedence) plus ``dkm``: :class:`DKMOptions`."""

    dkm: DKMOptions = field(factory=DKMOptions)

    yaml_key: ClassVar[str] = "dkm_palettization_config"
    options_field: ClassVar[Optional[str]] = "dkm"

    @classmethod
    def from_kmeans_config(cls, config: KMeansPalettizerConfig, dkm: DKMOptions | None = None) -> "DKMPalettizerConfig":
        """Wrap a plain ``KMeansPalettizerConfig`` (as the mixed-precision workflow passes) with DKMOptions."""
        return cls.from_specs(config, dkm)


TOP_LEVEL_KEY = DKMPalettizerConfig.yaml_key
"""YAML top-level key of :class:`DKMPalettizerConfig` documents (found by the core through the palettizer registry)."""
