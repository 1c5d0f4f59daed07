"""On-disk cache of the sensitivity stage, written as it goes so an interrupted run resumes.

Layout under ``<cache_dir>/sensitivity/<run key>/``:

- ``meta.json``: what the run key covers (schema, model class, metric, sample count).
- ``records/<pair key>.pt``: each (layer, candidate)'s compressed tensor, written
  atomically (temporary file + rename) right after it is clustered.
- ``rows.jsonl``: one JSON line per scored (layer, candidate), appended and flushed
  right after it is scored. A torn last line (a crash mid-write) is ignored.

The run key hashes the model's weights and buffers, the input data, the metric
(name, provider version, repr), the output function and the schema version; each
row and record is further keyed by its layer and by the candidate's spec,
palettizer, clustering algorithm and plugin version. So a rerun with the same
inputs reuses everything, adding a candidate computes only the new pairs, and any
change to weights, data, metric or algorithm starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..compressed import LutQuantization, PalettizedTensor, SparseOutliers
from ..config import PalettizationSpec, QuantizationSpec, from_dict, to_dict

__all__ = ["DEFAULT_CACHE_DIR", "SensitivityCache", "default_cache_dir", "record_from_state", "record_to_state"]

DEFAULT_CACHE_DIR = ".bitsmith-cache"
"""Cache root used when ``cache_dir`` is left at its default (overridden by ``BITSMITH_CACHE_DIR``)."""


def default_cache_dir() -> Path:
    """``$BITSMITH_CACHE_DIR`` or ``./.bitsmith-cache``."""
    return Path(os.environ.get("BITSMITH_CACHE_DIR") or DEFAULT_CACHE_DIR)


def digest(*parts: Any) -> str:
    """sha256 of the JSON form of ``parts`` (hex)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def record_to_state(record: PalettizedTensor) -> dict[str, Any]:
    """A record as plain tensors and JSON strings (loadable with ``torch.load(weights_only=True)``)."""
    state: dict[str, Any] = {
        "lut": record.lut, "indices": record.indices, "spec": json.dumps(to_dict(record.spec)),
        "shape": list(record.shape), "dtype": str(record.dtype).removeprefix("torch."), "axis": record.axis,
        "per_channel_scale": record.per_channel_scale,
    }
    if record.lut_quant is not None:
        q = record.lut_quant
        state["lut_quant"] = {"int_lut": q.int_lut, "scale": q.scale, "zero_point": q.zero_point,
                              "spec": json.dumps(to_dict(q.spec))}
    if record.outliers is not None:
        state["outliers"] = {"indices": record.outliers.indices, "values": record.outliers.values}
    return state


def record_from_state(state: dict[str, Any]) -> PalettizedTensor:
    """Inverse of :func:`record_to_state`."""
    lut_quant = None
    if state.get("lut_quant") is not None:
        q = state["lut_quant"]
        lut_quant = LutQuantization(q["int_lut"], q["scale"], q["zero_point"],
                                    from_dict(json.loads(q["spec"]), QuantizationSpec))
    outliers = None
    if state.get("outliers") is not None:
        outliers = SparseOutliers(state["outliers"]["indices"], state["outliers"]["values"])
    return PalettizedTensor(lut=state["lut"], indices=state["indices"],
                            spec=from_dict(json.loads(state["spec"]), PalettizationSpec),
                            shape=tuple(state["shape"]), dtype=getattr(torch, state["dtype"]), axis=state["axis"],
                            per_channel_scale=state["per_channel_scale"], lut_quant=lut_quant, outliers=outliers)


class SensitivityCache:
    """Rows and records of one run key; a disabled cache (``root=None``) stores nothing."""

    def __init__(self, root: Optional[Union[str, os.PathLike]], run_key: str, meta: dict[str, Any]):
        self.run_key = run_key
        self.path: Optional[Path] = None
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        if root is None:
            return
        self.path = Path(root) / "sensitivity" / run_key[:24]
        (self.path / "records").mkdir(parents=True, exist_ok=True)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            _atomic_write(meta_path, (json.dumps({**meta, "run_key": run_key}, indent=1, default=str) + "\n").encode())
        rows_path = self.path / "rows.jsonl"
        if rows_path.exists():
            for line in rows_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._rows[(row["layer"], row["pair"])] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # torn write from an interrupted run

    @property
    def enabled(self) -> bool:
        """True when backed by a directory."""
        return self.path is not None

    @staticmethod
    def pair_key(layer: str, candidate_key: str) -> str:
        """Key of one (layer, candidate) within the run."""
        return digest(layer, candidate_key)[:24]

    def row(self, layer: str, pair: str) -> Optional[dict[str, Any]]:
        """The stored row of a pair (``score``, ``seconds``), if any."""
        return self._rows.get((layer, pair))

    def add_row(self, layer: str, pair: str, **values: Any) -> None:
        """Append one scored pair (flushed and fsynced before returning)."""
        row = {"layer": layer, "pair": pair, **values}
        self._rows[(layer, pair)] = row
        if self.path is None:
            return
        with open(self.path / "rows.jsonl", "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def load_record(self, pair: str) -> Optional[PalettizedTensor]:
        """The stored record of a pair, if present and readable."""
        if self.path is None:
            return None
        file = self.path / "records" / f"{pair}.pt"
        if not file.exists():
            return None
        try:
            return record_from_state(torch.load(file, weights_only=True))
        except Exception:  # noqa: BLE001 - an unreadable record is recomputed
            return None

    def save_record(self, pair: str, record: PalettizedTensor) -> None:
        """Store a record atomically."""
        if self.path is None:
            return
        file = self.path / "records" / f"{pair}.pt"
        fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(record_to_state(record), tmp)
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
