"""Config of :class:`~bitsmith_refine.RefinePalettizer`: a ``KMeansPalettizerConfig`` plus refinement options.

Which tensors get which ``PalettizationSpec`` is decided exactly as for k-means
(seed 003); the training options (:class:`~bitsmith_refine.refine.RefineOptions`)
live under ``refine:``::

    refine_palettization_config:
      global_config: {op_state_spec: {weight: {n_bits: 4, enable_per_channel_scale: true}}}
      refine: {steps: 100, lr: 0.0003, anchor: 0.0}

or per layer in any palettization config (``algorithm: refine``, ``options: {steps: 50}``).
Built through the core converter: unknown keys and bad values fail with their dotted
path, e.g. ``refine.steps: expected a positive integer, got 0``.
"""

from __future__ import annotations

from typing import ClassVar, Optional

from attrs import define, field

from bitsmith.config import KMeansPalettizerConfig

from .refine import RefineOptions

__all__ = ["RefinePalettizerConfig"]


@define(kw_only=True)
class RefinePalettizerConfig(KMeansPalettizerConfig):
    """``KMeansPalettizerConfig`` (same fields, same precedence) plus ``refine``: :class:`RefineOptions`."""

    refine: RefineOptions = field(factory=RefineOptions)

    yaml_key: ClassVar[str] = "refine_palettization_config"
    options_field: ClassVar[Optional[str]] = "refine"
