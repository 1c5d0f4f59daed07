"""Reading a packed file's header safely: size cap, JSON parsing, field checks with precise errors.

Every problem raises :class:`FormatError` whose message starts with the file's path and
names the broken field as a dotted path into the header (``records[3].shape``), so a
damaged or hand-edited file never surfaces as a bare ``KeyError``/``IndexError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Union

from bitsmith.errors import BitsmithError

FORMAT = "bitsmith-packed"
"""Value of the ``format`` metadata entry."""

SCHEMA_VERSION = 2
"""Version of the layout described in docs/format.md; readers refuse newer versions."""

HEADER_KEY = "bitsmith"
"""``__metadata__`` entry holding the bitsmith header (a JSON string)."""

HEADER_SHA256_KEY = "bitsmith_sha256"
"""``__metadata__`` entry holding the SHA-256 (hex) of the ``bitsmith`` entry's UTF-8 bytes."""

MAX_HEADER_BYTES = 64 * 2**20
"""Largest safetensors JSON header read (the 8-byte length prefix is checked before anything is parsed)."""

MAX_SHAPE_NUMEL = 2**40
"""Largest element count accepted in a header shape."""

_MAX_SHOWN = 80


class FormatError(BitsmithError, ValueError):
    """A file is not a readable bitsmith packed file, or does not match the model; the message names the file and field."""


def shown(value: Any) -> str:
    """``repr(value)``, truncated so that a huge damaged value never floods a message."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + f"… ({len(text)} characters)"


class Fields:
    """Typed access to header fields; every failure is a :class:`FormatError` naming ``path`` and the field."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)

    def error(self, where: str, problem: str) -> FormatError:
        """A :class:`FormatError` for field ``where``."""
        return FormatError(f"{self.path}: header field {where}: {problem}")

    def get(self, obj: Any, key: str, kind: Union[type, tuple[type, ...]], where: str, *,
            optional: bool = False) -> Any:
        """``obj[key]`` checked to be an instance of ``kind`` (``None`` allowed when ``optional``)."""
        if not isinstance(obj, dict):
            raise self.error(where, f"expected a JSON object, got {shown(obj)}")
        if key not in obj:
            if optional:
                return None
            raise self.error(f"{where}.{key}" if where else key, "missing")
        value = obj[key]
        if optional and value is None:
            return None
        bad_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        if not isinstance(value, kind) or bad_bool:
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.error(f"{where}.{key}" if where else key, f"expected {names}, got {shown(value)}")
        return value

    def integer(self, obj: Any, key: str, where: str, lo: int, hi: int) -> int:
        """An integer field within ``[lo, hi]``."""
        value = self.get(obj, key, int, where)
        if not lo <= value <= hi:
            raise self.error(f"{where}.{key}", f"{value} is outside [{lo}, {hi}]")
        return value

    def shape(self, obj: Any, key: str, where: str) -> tuple[int, ...]:
        """A list of non-negative integers whose product is at most :data:`MAX_SHAPE_NUMEL`."""
        value = self.get(obj, key, list, where)
        if len(value) > 16 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise self.error(f"{where}.{key}", f"expected a list of at most 16 non-negative integers, got {shown(value)}")
        if math.prod(value) > MAX_SHAPE_NUMEL:
            raise self.error(f"{where}.{key}", f"{value} has more than {MAX_SHAPE_NUMEL} elements")
        return tuple(value)

    def name_pair(self, value: Any, where: str) -> tuple[str, str]:
        """A ``[module, tensor]`` pair of strings."""
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise self.error(where, f"expected [module, tensor] strings, got {shown(value)}")
        return value[0], value[1]


def read_raw_header(path: Union[str, os.PathLike]) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header of ``path`` and its size in bytes (the 8-byte prefix excluded).

    The declared size is checked against :data:`MAX_HEADER_BYTES` and the file's size
    before any byte of the header is read or parsed.
    """
    path = Path(path)
    fields = Fields(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise FormatError(f"{path}: {size} bytes is too short for a safetensors file (8-byte header length first)")
        n = int.from_bytes(prefix, "little")
        if n > MAX_HEADER_BYTES:
            raise fields.error("(header length)", f"{n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit; "
                                                  "the file is damaged or not a safetensors file")
        if n > size - 8:
            raise fields.error("(header length)", f"{n} bytes but only {size - 8} bytes follow; the file is truncated")
        raw = fh.read(n)
    try:
        table = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: the safetensors header is not valid UTF-8 JSON ({shown(str(exc))})") from None
    if not isinstance(table, dict):
        raise fields.error("(safetensors header)", f"expected a JSON object, got {shown(table)}")
    return table, n


def parse_metadata(path: Union[str, os.PathLike], table: dict[str, Any]) -> dict[str, Any]:
    """The bitsmith header from a safetensors header ``table``: format, version and digest checked first."""
    fields = Fields(path)
    meta = table.get("__metadata__")
    if not isinstance(meta, dict) or "format" not in meta and HEADER_KEY not in meta:
        raise FormatError(f"{path}: not a bitsmith packed file (no 'format'/{HEADER_KEY!r} in __metadata__); "
                          "plain safetensors state dicts load with safetensors.torch.load_file")
    if HEADER_KEY in meta and "format" not in meta:
        _refuse_schema_1(path, meta)
    fmt = fields.get(meta, "format", str, "__metadata__")
    if fmt != FORMAT:
        raise fields.error("__metadata__.format", f"{shown(fmt)} is not {FORMAT!r}")
    version_text = fields.get(meta, "schema_version", str, "__metadata__")
    if not version_text.isdigit() or len(version_text) > 6:
        raise fields.error("__metadata__.schema_version", f"expected a decimal integer, got {shown(version_text)}")
    version = int(version_text)
    if version > SCHEMA_VERSION:
        raise FormatError(f"{path}: schema_version {version} is newer than this reader ({SCHEMA_VERSION}); "
                          "upgrade bitsmith-export-safetensors")
    if version < SCHEMA_VERSION:
        _refuse_schema_1(path, meta)
    text = fields.get(meta, HEADER_KEY, str, "__metadata__")
    digest = fields.get(meta, HEADER_SHA256_KEY, str, "__metadata__")
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != digest:
        raise fields.error(f"__metadata__.{HEADER_KEY}", "does not match its SHA-256 in "
                           f"__metadata__.{HEADER_SHA256_KEY}; the header was changed or damaged")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise fields.error(f"__metadata__.{HEADER_KEY}", f"not valid JSON ({shown(str(exc))})") from None
    if not isinstance(header, dict):
        raise fields.error(f"__metadata__.{HEADER_KEY}", f"expected a JSON object, got {shown(header)}")
    return header


def _refuse_schema_1(path: Union[str, os.PathLike], meta: dict[str, Any]) -> None:
    raise FormatError(f"{path}: written in bitsmith's packed schema 1 (one opaque 'bitsmith/data' blob), which this "
                      f"reader no longer reads (it reads schema {SCHEMA_VERSION}); export the model again with "
                      "backend.save(model, path), or load it with bitsmith-export-safetensors 0.1")


__all__ = ["FORMAT", "Fields", "FormatError", "HEADER_KEY", "HEADER_SHA256_KEY", "MAX_HEADER_BYTES", "SCHEMA_VERSION",
           "parse_metadata", "read_raw_header", "shown"]
