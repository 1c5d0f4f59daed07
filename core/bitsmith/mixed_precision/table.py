"""The sensitivity table: one row per (layer, candidate) with its all-in size and its score.

Printed like seed 000's table (layer, config, size, sensitivity), saved and loaded as
CSV or JSON with a schema version. Sizes come from :mod:`bitsmith.sizes` (indices +
LUTs + scales + outliers); ``distortion`` is the metric's additive form of the score
that recipe searches minimise.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from attrs import define, evolve, field

from .. import atomic, safe_yaml
from ..compressed import PalettizedTensor
from ..config import PalettizationSpec, from_dict, to_dict
from ..errors import ConfigError
from ..sizes import dtype_bits
from ..table import format_table
from .inputs import LayerInfo

__all__ = ["SCHEMA_VERSION", "SensitivityRow", "SensitivityTable"]

SCHEMA_VERSION = 1
"""Version of the saved table format (CSV and JSON); bumped on incompatible changes."""

KIND = "bitsmith.sensitivity_table"

_CSV_FIELDS = ("layer", "candidate", "palettizer", "numel", "bits", "index_bits", "kib", "score", "distortion", "spec")


def encode_float(value: float) -> Union[float, str]:
    """JSON-safe float: non-finite values as the strings ``inf``, ``-inf``, ``nan``."""
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def decode_float(value: Any) -> float:
    """Inverse of :func:`encode_float` (also accepts numeric strings)."""
    return float(value)


@define(frozen=True)
class SensitivityRow:
    """One (layer, candidate): all-in and index bits of the compressed tensor, score and distortion."""

    layer: str
    candidate: str
    spec: PalettizationSpec
    palettizer: str
    numel: int
    bits: int
    index_bits: int
    score: float
    distortion: float

    @property
    def kib(self) -> float:
        """All-in size in KiB."""
        return self.bits / 8 / 1024

    @property
    def bpw(self) -> float:
        """All-in bits per weight."""
        return self.bits / self.numel

    @property
    def bpw_index(self) -> float:
        """Index bits per weight."""
        return self.index_bits / self.numel

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-safe)."""
        return {"layer": self.layer, "candidate": self.candidate, "palettizer": self.palettizer,
                "spec": to_dict(self.spec), "numel": self.numel, "bits": self.bits, "index_bits": self.index_bits,
                "score": encode_float(self.score), "distortion": encode_float(self.distortion)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SensitivityRow":
        """Inverse of :meth:`to_dict`."""
        return cls(layer=str(data["layer"]), candidate=str(data["candidate"]),
                   spec=from_dict(data["spec"], PalettizationSpec), palettizer=str(data["palettizer"]),
                   numel=int(data["numel"]), bits=int(data["bits"]), index_bits=int(data["index_bits"]),
                   score=decode_float(data["score"]), distortion=decode_float(data["distortion"]))


@define
class SensitivityTable:
    """Scores of every (layer, candidate) pair, plus what a recipe needs to price a whole model.

    :param rows: in layer order, then candidate order.
    :param layers: every scored layer (name, tensor, shape, dtype), in model order.
    :param metric: registered metric name; ``higher_is_better`` and ``unit`` describe its scores.
    :param uncompressed_bits: bits of every model tensor that is not one of ``layers``'
        weights (biases, norms, other parameters and floating-point buffers): the part
        of the model size no recipe changes.
    :param meta: provenance and timings (engine, seconds per stage, sample count, cache key...).
    :param records: the compressed tensor of each ``(layer, candidate)`` (not saved
        with the table; :func:`~bitsmith.mixed_precision.apply_recipe` reuses them).
    """

    rows: list[SensitivityRow]
    layers: list[LayerInfo]
    metric: str
    higher_is_better: bool
    unit: str
    uncompressed_bits: int = 0
    meta: dict[str, Any] = field(factory=dict)
    records: dict[tuple[str, str], PalettizedTensor] = field(factory=dict, eq=False, repr=False)

    # ------------------------------------------------------------------ queries

    @property
    def layer_names(self) -> list[str]:
        """Layer names in model order."""
        return [info.name for info in self.layers]

    @property
    def candidates(self) -> list[str]:
        """Candidate labels in first-seen order."""
        return list(dict.fromkeys(row.candidate for row in self.rows))

    def layer(self, name: str) -> LayerInfo:
        """The :class:`LayerInfo` of ``name``."""
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(f"no layer {name!r} in the table; layers: {', '.join(self.layer_names[:8])}...")

    def rows_for(self, layer: str) -> list[SensitivityRow]:
        """Rows of one layer, in candidate order."""
        return [row for row in self.rows if row.layer == layer]

    def row(self, layer: str, candidate: str) -> SensitivityRow:
        """The row of ``(layer, candidate)``."""
        for row in self.rows:
            if row.layer == layer and row.candidate == candidate:
                return row
        raise KeyError(f"no row for layer {layer!r} and candidate {candidate!r}")

    def score(self, layer: str, candidate: str) -> float:
        """Score of ``(layer, candidate)``."""
        return self.row(layer, candidate).score

    @property
    def total_weights(self) -> int:
        """Weights of all scored layers (the denominator of a recipe's BPW)."""
        return sum(info.numel for info in self.layers)

    @property
    def dense_bits(self) -> int:
        """Bits of all scored layers' weights uncompressed."""
        return sum(info.numel * _dtype_bits(info.dtype) for info in self.layers)

    def select(self, *, candidates: Optional[Iterable[str]] = None, layers: Optional[Iterable[str]] = None
               ) -> "SensitivityTable":
        """A table restricted to some candidate labels and/or layers (records follow)."""
        keep_c = None if candidates is None else list(candidates)
        keep_l = None if layers is None else set(layers)
        if keep_c is not None:
            unknown = [c for c in keep_c if c not in self.candidates]
            if unknown:
                raise KeyError(f"unknown candidate(s) {', '.join(map(repr, unknown))}; "
                               f"candidates: {', '.join(self.candidates)}")
        if keep_l is not None:
            unknown = sorted(keep_l - set(self.layer_names))
            if unknown:
                raise KeyError(f"unknown layer(s) {', '.join(map(repr, unknown))}")
        rows = [r for r in self.rows if (keep_c is None or r.candidate in keep_c)
                and (keep_l is None or r.layer in keep_l)]
        infos = [i for i in self.layers if keep_l is None or i.name in keep_l]
        dropped = sum(i.numel * _dtype_bits(i.dtype) for i in self.layers if i not in infos)
        records = {k: v for k, v in self.records.items() if any(r.layer == k[0] and r.candidate == k[1] for r in rows)}
        return evolve(self, rows=rows, layers=infos, uncompressed_bits=self.uncompressed_bits + dropped,
                      meta=dict(self.meta), records=records)

    def head(self, n_layers: int = 5) -> "SensitivityTable":
        """The first ``n_layers`` layers (for printing)."""
        return self.select(layers=self.layer_names[:n_layers])

    # ------------------------------------------------------------------ printing

    def format(self, n_layers: Optional[int] = None) -> str:
        """Seed 000's table: layer (on its first row), config, size KiB, sensitivity."""
        names = self.layer_names if n_layers is None else self.layer_names[:n_layers]
        unit = f" {self.unit}" if self.unit else ""
        body = []
        for name in names:
            for i, row in enumerate(self.rows_for(name)):
                body.append((name if i == 0 else "", row.candidate, row.kib, row.score))
        header = ["Layer", "Config", "Size (KiB)", f"Sensitivity ({self.metric.upper()}{unit})"]
        return format_table(header, body, align="llrr")

    def __str__(self) -> str:
        return self.format()

    # ------------------------------------------------------------------ saving

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with ``schema_version``."""
        return {"kind": KIND, "schema_version": SCHEMA_VERSION, **self._header(),
                "rows": [row.to_dict() for row in self.rows]}

    def _header(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "unit": self.unit,
                "uncompressed_bits": self.uncompressed_bits, "layers": [i.to_dict() for i in self.layers],
                "meta": _json_safe(self.meta)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "table") -> "SensitivityTable":
        """Inverse of :meth:`to_dict`; rejects other kinds and newer schema versions."""
        _check_header(data, source)
        try:
            rows = [SensitivityRow.from_dict(r) for r in data["rows"]]
            return cls(rows=rows, layers=[LayerInfo.from_dict(i) for i in data["layers"]], metric=data["metric"],
                       higher_is_better=bool(data["higher_is_better"]), unit=data["unit"],
                       uncompressed_bits=int(data["uncompressed_bits"]), meta=dict(data.get("meta", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: malformed sensitivity table ({type(exc).__name__}: {exc})") from None

    def to_csv(self) -> str:
        """CSV text: a ``#`` line with the JSON header (schema version, metric, layers), then one row per pair."""
        out = io.StringIO()
        header = {"kind": KIND, "schema_version": SCHEMA_VERSION, **self._header()}
        out.write("# " + json.dumps(header, sort_keys=True) + "\n")
        writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            d = row.to_dict()
            writer.writerow({**{k: d[k] for k in _CSV_FIELDS if k != "kib" and k != "spec"},
                             "kib": f"{row.kib:.4f}", "spec": json.dumps(d["spec"], sort_keys=True)})
        return out.getvalue()

    @classmethod
    def from_csv(cls, text: str, *, source: str = "table.csv") -> "SensitivityTable":
        """Inverse of :meth:`to_csv`."""
        first, _, rest = text.partition("\n")
        if not first.startswith("# "):
            raise ConfigError(f"{source}: not a bitsmith sensitivity table (missing the '# {{...}}' header line)")
        try:
            header = json.loads(first[2:])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: bad header line: {exc}") from None
        rows = []
        for line_no, rec in enumerate(csv.DictReader(io.StringIO(rest)), start=3):
            try:
                rows.append({**rec, "spec": json.loads(rec["spec"])})
            except (KeyError, json.JSONDecodeError, TypeError) as exc:
                raise ConfigError(f"{source}:{line_no}: bad row ({exc})") from None
        return cls.from_dict({**header, "rows": rows}, source=source)

    def save(self, path: Union[str, Path], *, overwrite: bool = False) -> Path:
        """Write ``.csv`` or ``.json`` (by extension) atomically; returns the path.

        An existing file is replaced only with ``overwrite=True`` (:mod:`bitsmith.atomic`).
        """
        path = Path(path)
        if path.suffix == ".csv":
            text = self.to_csv()
        elif path.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=1) + "\n"
        else:
            raise ValueError(f"{path}: save a sensitivity table as .csv or .json")
        return atomic.write_text(path, text, overwrite=overwrite)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SensitivityTable":
        """Read a table written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such sensitivity table")
        if path.suffix == ".csv":
            return cls.from_csv(safe_yaml.read_text(path), source=str(path))
        if path.suffix == ".json":
            return cls.from_dict(safe_yaml.load_json(safe_yaml.read_text(path), source=str(path)), source=str(path))
        raise ValueError(f"{path}: a sensitivity table is a .csv or .json file")

    def equal_scores(self, other: "SensitivityTable", *, rel: float = 0.0, abs_db: float = 0.0) -> bool:
        """Same rows (layer, candidate, bits) and scores equal within ``rel`` (relative) or ``abs_db`` (absolute)."""
        if [(r.layer, r.candidate, r.bits) for r in self.rows] != [(r.layer, r.candidate, r.bits) for r in other.rows]:
            return False
        for a, b in zip(self.rows, other.rows):
            if a.score == b.score:
                continue
            if not (math.isfinite(a.score) and math.isfinite(b.score)):
                return False
            if abs(a.score - b.score) > max(abs_db, rel * max(abs(a.score), abs(b.score))):
                return False
        return True


def _check_header(data: Mapping[str, Any], source: str) -> None:
    if not isinstance(data, Mapping) or data.get("kind") != KIND:
        raise ConfigError(f"{source}: not a bitsmith sensitivity table (kind {KIND!r} expected)")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ConfigError(f"{source}: schema_version {version!r} is not supported (this bitsmith reads "
                          f"1..{SCHEMA_VERSION}); upgrade bitsmith or recompute the table")


def _dtype_bits(name: str) -> int:
    return dtype_bits(getattr(torch, name))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def rows_by_layer(rows: Sequence[SensitivityRow]) -> dict[str, list[SensitivityRow]]:
    """Group rows by layer, keeping order."""
    out: dict[str, list[SensitivityRow]] = {}
    for row in rows:
        out.setdefault(row.layer, []).append(row)
    return out
