"""Check a mixed-precision target against what the candidates can reach, before the sensitivity stage.

The size of a (layer, candidate) pair follows from the layer's shape and the
candidate's spec alone (:func:`bitsmith.sizes.palettized_size`), so the smallest and
the largest recipe are known before anything is clustered or scored. A target below
the smallest recipe fails at once, naming both ends, instead of after the whole
sensitivity stage; a target above the largest recipe only logs a warning (every
layer then gets its largest candidate).
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence, Union

from attrs import define
from torch import nn

from ..errors import CompressionError, ConfigError
from ..palettization.tensor import check_palettizable
from ..sizes import dense_size, model_size, palettized_size
from .candidates import CandidateLike, resolve_candidates
from .inputs import find_layers

__all__ = ["ReachableRange", "check_target", "reachable_range"]

logger = logging.getLogger("bitsmith.mixed_precision")


@define(frozen=True)
class ReachableRange:
    """Smallest and largest recipe over the scored layers: all-in bits, weights, and the rest of the model."""

    min_bits: int
    max_bits: int
    weights: int
    uncompressed_bits: int

    @property
    def min_bpw(self) -> float:
        """All-in bits per weight of the smallest recipe."""
        return self.min_bits / self.weights

    @property
    def max_bpw(self) -> float:
        """All-in bits per weight of the largest recipe."""
        return self.max_bits / self.weights

    def mib(self, bits: float) -> float:
        """Whole-model MiB when the scored layers take ``bits``."""
        return (bits + self.uncompressed_bits) / 8 / 2**20


def reachable_range(model: nn.Module, candidates: Optional[Sequence[CandidateLike]] = None, *,
                    layers: Union[None, str, Sequence[str]] = None) -> ReachableRange:
    """The smallest and largest recipe ``candidates`` allow on ``model``'s (selected) layers.

    Candidates that cannot apply to a layer are skipped there, as the sensitivity
    stage skips them. Raises :class:`ConfigError`/:class:`CompressionError` as
    :func:`~bitsmith.mixed_precision.compute_sensitivity` would for bad layers/candidates.
    """
    cands = resolve_candidates(candidates)
    infos = find_layers(model, layers)
    if not infos:
        raise CompressionError(f"{type(model).__name__} has no palettizable layer to score")
    lo = hi = weights = dense = 0
    for info in infos:
        sizes = []
        for cand in cands:
            try:
                check_palettizable(info.shape, cand.spec, info.qualified_name)
            except CompressionError:
                continue
            sizes.append(palettized_size(info.shape, cand.spec, info.torch_dtype).total_bits)
        if not sizes:
            raise CompressionError(f"layer {info.name!r} {info.shape}: no candidate applies")
        lo, hi = lo + min(sizes), hi + max(sizes)
        weights += math.prod(info.shape)
        dense += dense_size(info.shape, info.torch_dtype).total_bits
    return ReachableRange(min_bits=lo, max_bits=hi, weights=weights,
                          uncompressed_bits=model_size(model).total.total_bits - dense)


def check_target(model: nn.Module, candidates: Optional[Sequence[CandidateLike]] = None, *,
                 target_bpw: Optional[float] = None, target_size: Optional[float] = None,
                 layers: Union[None, str, Sequence[str]] = None, where: str = "") -> ReachableRange:
    """Refuse a target that is not a finite positive number or lies below the smallest recipe.

    :param where: prefix of the error's field (``"steps.0."`` in a pipeline).
    :raises ConfigError: naming the field, the value and the smallest and largest
        reachable BPW (and MiB for ``target_size``).
    """
    if (target_bpw is None) == (target_size is None):
        raise ConfigError(f"{where}target_bpw: give exactly one of target_bpw (bits per weight) or target_size (MiB)")
    name, target = ("target_bpw", target_bpw) if target_bpw is not None else ("target_size", target_size)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
        raise ConfigError(f"{where}{name}: expected a finite positive number, got {target!r}")
    reach = reachable_range(model, candidates, layers=layers)
    span = (f"reachable with these candidates: {reach.min_bpw:.3f} to {reach.max_bpw:.3f} BPW all-in "
            f"({reach.mib(reach.min_bits):.4g} to {reach.mib(reach.max_bits):.4g} MiB)")
    value = target if name == "target_bpw" else target * 8 * 2**20 - reach.uncompressed_bits
    low, high = (reach.min_bpw, reach.max_bpw) if name == "target_bpw" else (reach.min_bits, reach.max_bits)
    if value < low * (1 - 1e-9):
        raise ConfigError(f"{where}{name}: {target:g} is below the smallest recipe; {span}")
    if value > high * (1 + 1e-9):
        logger.warning("%s%s %g is above the largest recipe; every layer gets its largest candidate (%s)", where,
                       name, target, span)
    return reach
