"""On-disk cache of the sensitivity stage, written as it goes so an interrupted run resumes.

Layout under ``<cache_dir>/sensitivity/<run key>/``:

- ``meta.json``: what the run key covers (schema, model class, metric, sample count).
- ``records/<pair key>.pt``: each (layer, candidate)'s compressed tensor, written
  atomically (temporary file + rename) right after it is clustered.
- ``rows.jsonl``: one JSON line per scored (layer, candidate), appended and flushed
  right after it is scored. A torn last line (a crash mid-write) is ignored.
- ``rows.lock``: where POSIX advisory locks exist, appending a row and reading (and,
  when damaged lines are dropped, rewriting) ``rows.jsonl`` hold an exclusive lock on
  it, so runs sharing the folder never drop each other's fresh rows.

The run key hashes the model's weights and buffers, the input data, the metric
(name, provider version, repr), the output function and the schema version; each
row and record is further keyed by its layer and by the candidate's spec,
palettizer, clustering algorithm and plugin version. So a rerun with the same
inputs reuses everything, adding a candidate computes only the new pairs, and any
change to weights, data, metric or algorithm starts afresh.

Nothing read back is trusted blindly: every row and every record carries a sha256
digest of its content (and of the pair it belongs to), checked on load. A row or
record that is damaged, hand-edited, unreadable or stored under another pair's name
is ignored with a warning on the ``bitsmith.cache`` logger, so it is recomputed. A
cache folder that cannot be created or written turns the cache off for the run
(with a warning) instead of failing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from .. import atomic
from ..compressed import LutQuantization, PalettizedTensor, SparseOutliers
from ..config import PalettizationSpec, QuantizationSpec, from_dict, to_dict

logger = logging.getLogger("bitsmith.cache")

__all__ = ["DEFAULT_CACHE_DIR", "SensitivityCache", "default_cache_dir", "record_from_state", "record_to_state"]

DEFAULT_CACHE_DIR = ".bitsmith-cache"
"""Cache root used when ``cache_dir`` is left at its default (overridden by ``BITSMITH_CACHE_DIR``)."""


def default_cache_dir() -> Path:
    """``$BITSMITH_CACHE_DIR`` or ``./.bitsmith-cache``."""
    return Path(os.environ.get("BITSMITH_CACHE_DIR") or DEFAULT_CACHE_DIR)


def digest(*parts: Any) -> str:
    """sha256 of the JSON form of ``parts`` (hex)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def state_digest(pair: str, state: Any) -> str:
    """sha256 (hex) of a record state (tensors by dtype, shape and bytes; other values as JSON) and its pair key."""
    h = hashlib.sha256(pair.encode())

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{flat.dtype}{tuple(value.shape)}".encode())
            h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(value, dict):
            h.update(b"{")
            for key in sorted(value):
                h.update(json.dumps(key).encode())
                feed(value[key])
            h.update(b"}")
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for item in value:
                feed(item)
            h.update(b"]")
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())

    feed(state)
    return h.hexdigest()


def _row_digest(row: dict[str, Any]) -> str:
    return digest({k: v for k, v in row.items() if k != "digest"})


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
        path = Path(root) / "sensitivity" / run_key[:24]
        try:
            (path / "records").mkdir(parents=True, exist_ok=True)
            meta_path = path / "meta.json"
            if not meta_path.exists():
                atomic.write_text(meta_path, json.dumps({**meta, "run_key": run_key}, indent=1, default=str) + "\n")
            with open(path / "rows.jsonl", "a"):
                pass  # the folder must be writable too, or every row would fail later
        except OSError as exc:
            logger.warning("sensitivity cache %s is not usable (%s); running without the cache", path,
                           exc.strerror or exc)
            return
        self.path = path
        try:
            with _locked(path / "rows.lock"):  # no append can land between the read and a compaction
                self._read_rows(path / "rows.jsonl")
        except OSError as exc:
            self._disable(exc)

    def _read_rows(self, rows_path: Path) -> None:
        try:
            text = rows_path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            logger.warning("cannot read %s (%s); its scores will be recomputed", rows_path, exc.strerror or exc)
            return
        bad, kept = 0, []
        for line in text.splitlines():
            row = _verified_row(line)
            if row is None:
                bad += line.strip() != ""
                continue
            self._rows[(row["layer"], row["pair"])] = row
            kept.append(line)
        if bad:
            logger.warning("%s: ignored %d damaged or edited cached score(s) (digest mismatch or unreadable) and "
                           "removed them from the file; scores without a valid copy are recomputed", rows_path, bad)
            self._compact(rows_path, kept)

    def _compact(self, rows_path: Path, kept: list[str]) -> None:
        """Rewrite ``rows.jsonl`` with only its verified lines (atomically), so damage is reported once."""
        try:
            atomic.write_text(rows_path, "".join(line + "\n" for line in kept), overwrite=True)
        except OSError as exc:
            self._disable(exc)

    @property
    def enabled(self) -> bool:
        """True when backed by a directory."""
        return self.path is not None

    @staticmethod
    def pair_key(layer: str, candidate_key: str) -> str:
        """Key of one (layer, candidate) within the run."""
        return digest(layer, candidate_key)[:24]

    def row(self, layer: str, pair: str) -> Optional[dict[str, Any]]:
        """The stored row of a pair (``score``, ``seconds``), if any (only rows whose digest matched)."""
        return self._rows.get((layer, pair))

    def add_row(self, layer: str, pair: str, **values: Any) -> None:
        """Append one scored pair with its digest (flushed and fsynced before returning)."""
        row = {"layer": layer, "pair": pair, **values}
        row["digest"] = _row_digest(json.loads(json.dumps(row, default=str)))  # over the form read back
        self._rows[(layer, pair)] = row
        if self.path is None:
            return
        try:
            with _locked(self.path / "rows.lock"), open(self.path / "rows.jsonl", "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self._disable(exc)

    def load_record(self, pair: str) -> Optional[PalettizedTensor]:
        """The stored record of a pair, if present, readable and matching its digest (else ``None``, with a warning)."""
        if self.path is None:
            return None
        file = self.path / "records" / f"{pair}.pt"
        if not file.exists():
            return None
        try:
            stored = torch.load(file, weights_only=True)
            state = stored["state"]
            if stored["digest"] != state_digest(pair, state):
                raise ValueError("digest mismatch: the file was changed after it was written")
            return record_from_state(state)
        except Exception as exc:  # noqa: BLE001 - any damage means: recompute
            logger.warning("cached record %s is not usable (%s: %s); recomputing it", file, type(exc).__name__,
                           str(exc)[:200])
            return None

    def save_record(self, pair: str, record: PalettizedTensor) -> None:
        """Store a record and its digest atomically (replacing an earlier, unusable one)."""
        if self.path is None:
            return
        state = record_to_state(record)
        try:
            with atomic.temp_path(self.path / "records" / f"{pair}.pt", overwrite=True) as tmp:
                torch.save({"state": state, "digest": state_digest(pair, state)}, tmp)
        except OSError as exc:
            self._disable(exc)

    def _disable(self, exc: OSError) -> None:
        logger.warning("cannot write to the sensitivity cache %s (%s); continuing without the cache", self.path,
                       exc.strerror or exc)
        self.path = None


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (created if needed); a no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: a single writer per cache folder is assumed
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _verified_row(line: str) -> Optional[dict[str, Any]]:
    """The row of one ``rows.jsonl`` line if it parses, has its fields and its digest matches; else ``None``."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("layer"), str) or not isinstance(row.get("pair"), str):
        return None
    score = row.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
        return None
    if row.get("digest") != _row_digest(row):
        return None
    return row
