"""Config of :class:`~bitsmith_gptq.GPTQPalettizer`: a ``KMeansPalettizerConfig`` plus GPTQ options.

Which tensors get which ``PalettizationSpec`` is decided exactly as for k-means
(seed 003); the GPTQ options live under ``gptq:``::

    gptq_palettization_config:
      global_config: {op_state_spec: {weight: {n_bits: 4, enable_per_channel_scale: true}}}
      gptq: {damp: 0.02, act_order: true}

or per layer in any palettization config (``algorithm: gptq``, ``options: {damp: 0.02}``).
Built through the core converter: unknown keys and bad values fail with their dotted
path, e.g. ``gptq.damp: expected a number in (0, 1], got 0``.
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar, Optional

from attrs import define, field

from bitsmith.config import KMeansPalettizerConfig


def _damp(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"damp: expected a number in (0, 1], got {value!r}")
    if not 0 < value <= 1:
        raise ValueError(f"damp: expected a number in (0, 1], got {value!r}")


def _shrinkage(instance, attribute, value) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"shrinkage: expected 'auto' or a number in [0, 1], got {value!r}")


def _flag(instance, attribute, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name}: expected true or false, got {value!r}")


def _block_size(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"block_size: expected a positive integer, got {value!r}")


@define(kw_only=True, frozen=True)
class GPTQOptions:
    """Options of GPTQ index assignment (see :class:`~bitsmith_gptq.GPTQPalettizer` for what each does).

    :param damp: Hessian damping, a fraction of the mean input second moment, in (0, 1].
    :param shrinkage: ``"auto"`` or a number in [0, 1]: pull ``H`` toward its mean diagonal.
    :param act_order: process columns by decreasing input energy.
    :param refit_scales: refit per-channel scales to the output (specs with ``enable_per_channel_scale``).
    :param block_size: columns per GPTQ block (speed only).
    :param weighted_luts: LUTs by k-means weighted by each weight's input energy.
    """

    damp: float = field(default=0.01, validator=_damp)
    shrinkage: Any = field(default="auto", validator=_shrinkage)  # "auto" or a float
    act_order: bool = field(default=True, validator=_flag)
    refit_scales: bool = field(default=True, validator=_flag)
    block_size: int = field(default=128, validator=_block_size)
    weighted_luts: bool = field(default=True, validator=_flag)


@define(kw_only=True)
class GPTQPalettizerConfig(KMeansPalettizerConfig):
    """``KMeansPalettizerConfig`` (same fields, same precedence) plus ``gptq``: :class:`GPTQOptions`."""

    gptq: GPTQOptions = field(factory=GPTQOptions)

    yaml_key: ClassVar[str] = "gptq_palettization_config"
    options_field: ClassVar[Optional[str]] = "gptq"
