"""What a config leaves uncompressed, and the specs that stand in for ones that do not fit.

:func:`fit_spec` applies a config's ``on_incompatible`` policy to one tensor: the
spec as written when it fits, otherwise an error, nothing (``skip``) or the nearest
spec of the same bit width that fits (``fallback``). :func:`coverage` lists every
parameter of a model with its fate: compressed, compressed with a changed spec, or
left uncompressed with the reason (layer type not palettizable, excluded by the
config, incompatible shape). A parameter is compressed exactly when it carries a
record; a tied one is judged by the owner whose config asks for it. Palettizers
attach it to their report (``report().coverage``) and warn with
:class:`LowCoverageWarning` when more than :data:`WARN_UNCOMPRESSED_FRACTION` of the
model's weights stay uncompressed.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence

import attrs
from attrs import define, field
from torch import nn

from . import compressed
from .config.specs import PalettizationSpec, PerGroupedChannelGranularity, PerTensorGranularity
from .errors import CompressionError
from .resolve import ResolvedTensor, resolve_state_specs
from .table import format_table

WARN_UNCOMPRESSED_FRACTION = 0.10
"""Share of a model's weights (parameters, by element count) left uncompressed above which prepare() warns."""

COMPRESSED, CHANGED, UNCOMPRESSED = "compressed", "changed", "uncompressed"
"""The three fates of a parameter in a :class:`Coverage`."""


class LowCoverageWarning(UserWarning):
    """More than :data:`WARN_UNCOMPRESSED_FRACTION` of a model's weights stay uncompressed."""


class IncompatibleLayerWarning(UserWarning):
    """A spec did not fit a tensor and ``on_incompatible`` skipped it or changed its spec."""


def _nearest_group_size(channels: int, group_size: int, cluster_dim: int) -> Optional[int]:
    """The divisor of ``channels`` that is a multiple of ``cluster_dim`` nearest to ``group_size`` (ties: smaller)."""
    options = [d for d in range(cluster_dim, channels + 1, cluster_dim) if channels % d == 0]
    return min(options, key=lambda d: (abs(d - group_size), d)) if options else None


def _fallback(shape: Sequence[int], spec: PalettizationSpec) -> Optional[PalettizationSpec]:
    gran = spec.granularity
    if isinstance(gran, PerGroupedChannelGranularity):
        if len(shape) <= gran.axis:
            candidate = attrs.evolve(spec, granularity=PerTensorGranularity())
        else:
            size = _nearest_group_size(shape[gran.axis], gran.group_size, spec.cluster_dim)
            if size is None:
                return None
            candidate = attrs.evolve(spec, granularity=attrs.evolve(gran, group_size=size))
    else:
        return None  # per-tensor fails only on cluster_dim; a scalar spec would change the bits per weight
    return candidate


def fit_spec(shape: Sequence[int], spec: Any, policy: str, name: str) -> tuple[Any, Optional[str]]:
    """The spec to use for a tensor of ``shape`` under ``policy``, and a note when it is not ``spec`` itself.

    ``policy`` is ``"error"`` (raise :class:`CompressionError` naming ``name``),
    ``"skip"`` (return ``None``: leave the tensor uncompressed) or ``"fallback"``
    (the dividing group size nearest to the requested one, per-tensor when the
    grouped axis does not exist; ``None`` when no spec of the same bits and
    ``cluster_dim`` fits). Specs other than palettization specs are returned as is.
    """
    from .palettization.tensor import check_palettizable

    if not isinstance(spec, PalettizationSpec):
        return spec, None
    try:
        check_palettizable(tuple(shape), spec, name)
        return spec, None
    except CompressionError as exc:
        if policy == "error":
            raise
        reason = str(exc).removeprefix(f"{name}: ")
        replacement = _fallback(shape, spec) if policy == "fallback" else None
        if replacement is None:
            return None, f"incompatible shape, skipped: {reason}"
        return replacement, f"changed {spec.describe()} -> {replacement.describe()}: {reason}"


@define(frozen=True)
class CoverageEntry:
    """One parameter: qualified name (first owner), shape, element count, fate and why."""

    name: str
    shape: tuple[int, ...]
    numel: int
    status: str
    reason: str


@define
class Coverage:
    """Every parameter of a model (shared ones once) and whether it was compressed.

    ``str()`` prints the parameters that were changed or left uncompressed, grouped
    reasons first, and the share of weights compressed.
    """

    entries: list[CoverageEntry] = field(factory=list)

    @property
    def total_weights(self) -> int:
        """Elements in all parameters."""
        return sum(e.numel for e in self.entries)

    @property
    def uncompressed(self) -> list[CoverageEntry]:
        """Parameters left uncompressed, with the reason."""
        return [e for e in self.entries if e.status == UNCOMPRESSED]

    @property
    def changed(self) -> list[CoverageEntry]:
        """Parameters compressed with a spec other than the configured one (``on_incompatible="fallback"``)."""
        return [e for e in self.entries if e.status == CHANGED]

    @property
    def uncompressed_fraction(self) -> float:
        """Share of the model's weights (elements) left uncompressed."""
        total = self.total_weights
        return sum(e.numel for e in self.uncompressed) / total if total else 0.0

    def to_dicts(self) -> list[dict[str, Any]]:
        """One plain dict per parameter."""
        return [attrs.asdict(e) for e in self.entries]

    def summary(self) -> str:
        """Short text: the share compressed, each changed tensor, and the uncompressed ones grouped by reason."""
        lines = [f"coverage: {1 - self.uncompressed_fraction:.1%} of {self.total_weights} weights compressed; "
                 f"{len(self.uncompressed)} parameters uncompressed, {len(self.changed)} changed"]
        lines += [f"  {e.name}: {e.reason}" for e in self.changed]
        groups: dict[str, list[CoverageEntry]] = {}
        for e in self.uncompressed:
            groups.setdefault(e.reason.split(" (")[0] + _kind(e.reason), []).append(e)
        for reason, entries in sorted(groups.items(), key=lambda kv: -sum(e.numel for e in kv[1])):
            names = ", ".join(e.name for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
            lines.append(f"  uncompressed, {reason}: {len(entries)} parameters, "
                         f"{sum(e.numel for e in entries)} weights ({names})")
        return "\n".join(lines)

    def __str__(self) -> str:
        rows = [(e.name, "x".join(map(str, e.shape)), e.numel, e.status, e.reason)
                for e in self.entries if e.status != COMPRESSED]
        if not rows:
            return self.summary()
        return self.summary() + "\n" + format_table(["parameter", "shape", "weights", "status", "reason"], rows,
                                                    align="llrll")


def _kind(reason: str) -> str:
    """The layer type of a "type not palettizable" reason, e.g. `` (BatchNorm2d)``; empty otherwise."""
    marker = " is not a palettizable layer type"
    if marker not in reason:
        return ""
    return f" ({reason.split(' (', 1)[1].split(marker)[0]})"


def _reason(rule: str, spec: Any) -> str:
    if "is not a palettizable layer type" in rule:
        return f"type not palettizable ({rule})"
    return f"excluded by config ({rule})" if spec is None else f"not compressed ({rule})"


def coverage(model: nn.Module, config: Any, notes: Optional[Mapping[str, str]] = None) -> Coverage:
    """The :class:`Coverage` of ``model`` (after ``prepare()``) under ``config``.

    ``notes`` maps a tensor's qualified name to what :func:`fit_spec` said about it.
    A parameter counts as compressed when any module that owns it carries a record
    for it, whatever the config says; shared (tied) parameters appear once, under
    their first owner's name. See :func:`_entry` for the reason given.
    """
    owners: dict[int, list[ResolvedTensor]] = {}
    for item in resolve_state_specs(model, config, warn_unmatched=False):
        owners.setdefault(id(getattr(item.module, item.tensor_name)), []).append(item)
    return Coverage([_entry(items, notes or {}) for items in owners.values()])


def _entry(owners: Sequence[ResolvedTensor], notes: Mapping[str, str]) -> CoverageEntry:
    """The fate of one parameter from every (module, name) that holds it.

    The config entry that decides is the first owner's with a spec (the one
    ``prepare()`` compresses the tensor under), else the first owner's; a note of
    :func:`fit_spec` is looked up under the owners that have a spec. A record on a
    tensor that no owner's spec asks for (the model came compressed) is reported as
    ``already compressed``.
    """
    first = owners[0]
    tensor = getattr(first.module, first.tensor_name)
    configured = [o for o in owners if o.spec is not None]
    decider = configured[0] if configured else first
    note = next((notes[o.qualified_name] for o in configured if o.qualified_name in notes), None)
    if any(o.tensor_name in compressed.records(o.module) for o in owners):
        if not configured:
            status, reason = COMPRESSED, f"already compressed ({decider.rule})"
        else:
            status, reason = (CHANGED, note) if note else (COMPRESSED, decider.rule)
    else:
        status, reason = UNCOMPRESSED, note or _reason(decider.rule, decider.spec)
    return CoverageEntry(first.qualified_name, tuple(tensor.shape), tensor.numel(), status, reason)


def check_coverage(model: nn.Module, config: Any, notes: Optional[Mapping[str, str]] = None) -> Coverage:
    """:func:`coverage`, warning once when too much stays uncompressed or specs were skipped/changed."""
    result = coverage(model, config, notes)
    if notes:
        warnings.warn(f"bitsmith: {len(notes)} tensors did not fit their spec (on_incompatible): "
                      + "; ".join(f"{k}: {v}" for k, v in list(notes.items())[:5])
                      + ("; ..." if len(notes) > 5 else "") + " (see report().coverage)",
                      IncompatibleLayerWarning, stacklevel=3)
    if result.uncompressed_fraction > WARN_UNCOMPRESSED_FRACTION:
        biggest = sorted(result.uncompressed, key=lambda e: -e.numel)[:3]
        warnings.warn(f"bitsmith: {result.uncompressed_fraction:.1%} of the model's {result.total_weights} weights "
                      f"stay uncompressed (largest: "
                      + ", ".join(f"{e.name} {e.numel}: {e.reason}" for e in biggest)
                      + "); see report().coverage", LowCoverageWarning, stacklevel=3)
    return result


__all__ = ["CHANGED", "COMPRESSED", "UNCOMPRESSED", "WARN_UNCOMPRESSED_FRACTION", "Coverage", "CoverageEntry",
           "IncompatibleLayerWarning", "LowCoverageWarning", "check_coverage", "coverage", "fit_spec"]
