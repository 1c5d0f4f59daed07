"""Candidate compressions the sensitivity stage tries on every layer.

A :class:`Candidate` is a :class:`~bitsmith.config.PalettizationSpec` plus, optionally,
the registered palettizer that clusters it (``"kmeans"``, ``"sensitive_kmeans"``, a
third-party one) and a label. Candidates are written compactly as the spec's own
label (:meth:`PalettizationSpec.describe`) with an optional ``@palettizer`` suffix::

    "4"  or "4-bit"            4-bit, one LUT per tensor
    "2-bit g16"                one LUT per group of 16 output channels
    "2-bit g8a1"               groups of 8 input channels (axis 1)
    "4-bit +scale"             per-output-channel scale before clustering
    "4-bit cd2"                vector palettization (pairs of weights)
    "4-bit lut:int8"           LUT entries stored as int8 (symmetric)
    "3-bit @sensitive_kmeans"  clustered by the sensitive_kmeans palettizer
    "4-bit +scale @gptq"       k-means LUTs, indices chosen by the gptq palettizer
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Optional, Sequence, Union

from attrs import define, field

from ..config import (
    PALETTIZATION_N_BITS,
    PalettizationSpec,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
    QuantizationSpec,
    to_dict,
)
from ..errors import ConfigError

__all__ = ["Candidate", "CandidateLike", "candidate_grid", "default_candidates", "parse_candidate",
           "resolve_candidates"]


def _spec(instance, attribute, value) -> None:
    if not isinstance(value, PalettizationSpec):
        raise TypeError(f"spec: expected a PalettizationSpec, got {value!r}")


def _optional_name(instance, attribute, value) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"{attribute.name}: expected a non-empty string or None, got {value!r}")


@define(frozen=True, kw_only=True)
class Candidate:
    """One way to compress a layer: a spec, the palettizer that clusters it, and a label.

    :param spec: the palettization spec.
    :param palettizer: registered palettizer name; ``None`` uses the
        ``palettizer`` argument of :func:`~bitsmith.mixed_precision.compute_sensitivity`.
    :param label: how tables and recipes name it; defaults to the spec's label plus
        ``@palettizer`` when one is set (e.g. ``"4-bit"``, ``"3-bit g16 @sensitive_kmeans"``).
    """

    spec: PalettizationSpec = field(validator=_spec)
    palettizer: Optional[str] = field(default=None, validator=_optional_name)
    label: Optional[str] = field(default=None, validator=_optional_name)

    def __attrs_post_init__(self) -> None:
        if self.label is None:
            text = self.spec.describe() + (f" @{self.palettizer}" if self.palettizer else "")
            object.__setattr__(self, "label", text)

    def bound(self, palettizer: str) -> "Candidate":
        """This candidate with its palettizer filled in (the label is kept)."""
        if self.palettizer is not None:
            return self
        return Candidate(spec=self.spec, palettizer=palettizer, label=self.label)

    def key(self) -> str:
        """A stable digest of the spec and palettizer (the label is cosmetic): used by the cache."""
        payload = json.dumps({"spec": to_dict(self.spec), "palettizer": self.palettizer}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (``spec`` as in configs)."""
        return {"label": self.label, "palettizer": self.palettizer, "spec": to_dict(self.spec)}

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "candidate") -> "Candidate":
        """Inverse of :meth:`to_dict`; also accepts a label string (see :func:`parse_candidate`)."""
        from ..config import from_dict

        if isinstance(data, str):
            return parse_candidate(data)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a label string or a mapping with 'spec', got {data!r}")
        unknown = sorted(set(data) - {"label", "palettizer", "spec"})
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}: unknown key; allowed keys: label, palettizer, spec")
        if "spec" not in data:
            raise ConfigError(f"{path}.spec: required key is missing")
        try:
            spec = from_dict(data["spec"], PalettizationSpec)
        except ConfigError as exc:
            raise ConfigError([f"{path}.spec.{line}" for line in exc.lines]) from None
        try:
            return cls(spec=spec, palettizer=data.get("palettizer"), label=data.get("label"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}.{exc}") from None


CandidateLike = Union[Candidate, PalettizationSpec, int, str]
"""What candidate lists accept: a :class:`Candidate`, a spec, a bit width, or a label string."""

_TOKEN_RES = {
    "group": re.compile(r"g(\d+)(?:a([01]))?"),
    "cluster_dim": re.compile(r"cd(\d+)"),
    "lut": re.compile(r"lut:(\w+)"),
}


def parse_candidate(text: str) -> Candidate:
    """Parse a candidate label (module docstring grammar); :class:`ConfigError` explains a bad one."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"candidate: expected a label such as '4-bit g16', got {text!r}")
    body, _, suffix = text.strip().partition("@")
    palettizer = suffix.strip() or None
    tokens = body.split()
    if not tokens:
        raise ConfigError(f"candidate {text!r}: missing the bit width, e.g. '4-bit'")
    head = tokens[0].removesuffix("-bit")
    if not head.isdigit() or int(head) not in PALETTIZATION_N_BITS:
        raise ConfigError(f"candidate {text!r}: bit width {tokens[0]!r} is not one of "
                          f"{', '.join(map(str, PALETTIZATION_N_BITS))}")
    kwargs: dict[str, Any] = {"n_bits": int(head)}
    for token in tokens[1:]:
        if token == "+scale":
            kwargs["enable_per_channel_scale"] = True
        elif m := _TOKEN_RES["group"].fullmatch(token):
            kwargs["granularity"] = PerGroupedChannelGranularity(axis=int(m.group(2) or 0),
                                                                 group_size=int(m.group(1)))
        elif m := _TOKEN_RES["cluster_dim"].fullmatch(token):
            kwargs["cluster_dim"] = int(m.group(1))
        elif m := _TOKEN_RES["lut"].fullmatch(token):
            kwargs["lut_qspec"] = QuantizationSpec(dtype=m.group(1))
        else:
            raise ConfigError(f"candidate {text!r}: unknown token {token!r}; expected gN[a0|a1] (grouped "
                              "channels), cdN (cluster_dim), lut:DTYPE, +scale, or @palettizer")
    try:
        spec = PalettizationSpec(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"candidate {text!r}: {exc}") from None
    return Candidate(spec=spec, palettizer=palettizer)


def default_candidates() -> list[Candidate]:
    """2, 4 and 6-bit per-tensor palettization (seed 000's candidate configs)."""
    return [Candidate(spec=PalettizationSpec(n_bits=b, granularity=PerTensorGranularity())) for b in (2, 4, 6)]


def candidate_grid(bits: Sequence[int] = (2, 3, 4, 6, 8), *, group_sizes: Sequence[Optional[int]] = (None,),
                   per_channel_scale: Sequence[bool] = (False,),
                   palettizers: Sequence[Optional[str]] = (None,)) -> list[Candidate]:
    """Every combination of bit width, LUT granularity, per-channel scale and palettizer.

    ``group_sizes`` entries are ``None`` (one LUT per tensor) or a number of output
    channels per LUT; a grouped candidate that does not fit a layer (channels not
    divisible) is simply not tried on that layer. Example (issue 9's richer set)::

        candidate_grid((2, 3, 4, 6, 8), group_sizes=(None, 16), per_channel_scale=(False, True))
    """
    out = []
    for palettizer in palettizers:
        for n_bits in bits:
            for group in group_sizes:
                for scale in per_channel_scale:
                    gran = PerTensorGranularity() if group is None else PerGroupedChannelGranularity(
                        axis=0, group_size=group)
                    spec = PalettizationSpec(n_bits=n_bits, granularity=gran, enable_per_channel_scale=scale)
                    out.append(Candidate(spec=spec, palettizer=palettizer))
    return out


def resolve_candidates(candidates: Optional[Iterable[CandidateLike]]) -> list[Candidate]:
    """Normalize a candidate list (``None``: :func:`default_candidates`); labels must be unique."""
    if candidates is None:
        return default_candidates()
    if isinstance(candidates, (str, bytes, PalettizationSpec, Candidate, int)):
        raise TypeError(f"candidates: expected a list of candidates, got a single {type(candidates).__name__}")
    out: list[Candidate] = []
    for i, item in enumerate(candidates):
        if isinstance(item, Candidate):
            out.append(item)
        elif isinstance(item, PalettizationSpec):
            out.append(Candidate(spec=item))
        elif isinstance(item, bool):
            raise TypeError(f"candidates[{i}]: expected a Candidate, a PalettizationSpec, a bit width or a label, "
                            f"got {item!r}")
        elif isinstance(item, int):
            if item not in PALETTIZATION_N_BITS:
                raise ConfigError(f"candidates[{i}]: {item} is not one of {', '.join(map(str, PALETTIZATION_N_BITS))}")
            out.append(Candidate(spec=PalettizationSpec(n_bits=item)))
        elif isinstance(item, (str, dict)):
            out.append(Candidate.from_dict(item, path=f"candidates[{i}]"))
        else:
            raise TypeError(f"candidates[{i}]: expected a Candidate, a PalettizationSpec, a bit width or a label, "
                            f"got {type(item).__name__}")
    if not out:
        raise ConfigError("candidates: the list is empty")
    seen: dict[Optional[str], int] = {}
    for i, cand in enumerate(out):
        if cand.label in seen:
            raise ConfigError(f"candidates[{i}]: label {cand.label!r} repeats candidates[{seen[cand.label]}]")
        seen[cand.label] = i
    return out
