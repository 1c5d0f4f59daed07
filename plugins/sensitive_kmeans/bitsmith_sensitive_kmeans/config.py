"""Config of :class:`~bitsmith_sensitive_kmeans.SKMPalettizer`: a ``KMeansPalettizerConfig`` plus SKM options.

Which tensors get which ``PalettizationSpec`` is decided exactly as for k-means
(``global_config`` / ``module_type_configs`` / ``module_name_configs``, seed 003);
the SKM-specific options live under ``skm:``::

    sensitive_kmeans_palettization_config:
      global_config: {op_state_spec: {weight: {n_bits: 3}}}
      skm: {outlier_fraction: 0.005}

The config goes through the core converter (``bitsmith.config.load``/``dump``), so
unknown keys and bad values fail with their dotted path, e.g.
``skm.outlier_fraction: 0.7 is not in [0, 0.5)``.
"""

from __future__ import annotations

from typing import ClassVar, Optional

from attrs import define, field

from bitsmith.config import KMeansPalettizerConfig

MAX_OUTLIER_FRACTION = 0.5


def _fraction(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name}: expected a number in [0, {MAX_OUTLIER_FRACTION}), got {value!r}")
    if not 0 <= value < MAX_OUTLIER_FRACTION:
        raise ValueError(f"{attribute.name}: {value!r} is not in [0, {MAX_OUTLIER_FRACTION})")


MAX_SENSITIVITY_POWER = 2.0


def _power(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name}: expected a number in (0, {MAX_SENSITIVITY_POWER}], got {value!r}")
    if not 0 < value <= MAX_SENSITIVITY_POWER:
        raise ValueError(f"{attribute.name}: {value!r} is not in (0, {MAX_SENSITIVITY_POWER}]")


@define(kw_only=True)
class SKMOptions:
    """Options specific to sensitive k-means.

    :param sensitivity_power: the k-means sample weight of a weight is its
        sensitivity (diagonal Fisher) raised to this power: ``1`` (default) is
        SqueezeLLM's weighting, the diagonal second-order estimate of the loss
        change; smaller values temper a heavy-tailed Fisher toward plain k-means
        (which is the limit at 0). Must be in (0, 2].
    :param outlier_fraction: fraction of each tensor's weights, the most sensitive
        ones, kept exact as sparse outliers next to the LUT (dense-and-sparse,
        SqueezeLLM); ``0`` (default) keeps none. Each outlier costs one value at the
        weight's dtype plus a 32-bit position, counted in sizes and BPW.
    """

    sensitivity_power: float = field(default=1.0, validator=_power)
    outlier_fraction: float = field(default=0.0, validator=_fraction)


@define(kw_only=True)
class SKMPalettizerConfig(KMeansPalettizerConfig):
    """``KMeansPalettizerConfig`` (same fields, same precedence) plus ``skm``: :class:`SKMOptions`."""

    skm: SKMOptions = field(factory=SKMOptions)

    yaml_key: ClassVar[str] = "sensitive_kmeans_palettization_config"
    options_field: ClassVar[Optional[str]] = "skm"

    @classmethod
    def from_kmeans_config(cls, config: KMeansPalettizerConfig, skm: SKMOptions | None = None) -> "SKMPalettizerConfig":
        """Wrap a plain ``KMeansPalettizerConfig`` (as the mixed-precision workflow passes) with SKMOptions."""
        return cls.from_specs(config, skm)


TOP_LEVEL_KEY = SKMPalettizerConfig.yaml_key
"""YAML top-level key of :class:`SKMPalettizerConfig` documents (found by the core through the palettizer registry)."""
