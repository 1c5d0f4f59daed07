"""The safetensors container: write the named tensors with checksums atomically; open and verify a file.

``__metadata__`` holds ``format``, ``schema_version``, ``bitsmith`` (the JSON header) and
``bitsmith_sha256`` (the header's digest); the header's ``sha256`` maps every tensor name
to the SHA-256 of its bytes. Reading checks the header's size before parsing it, then the
format, version and header digest, then each tensor's digest, before any tensor is used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Union

import torch

from bitsmith import atomic

from .header import (
    FORMAT,
    HEADER_KEY,
    HEADER_SHA256_KEY,
    SCHEMA_VERSION,
    Fields,
    FormatError,
    parse_metadata,
    read_raw_header,
    shown,
)


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's bytes in row-major order, as stored in the file."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(flat.numpy().tobytes() if flat.numel() else b"").hexdigest()


def write(tensors: dict[str, torch.Tensor], header: dict[str, Any], path: Union[str, os.PathLike], *,
          overwrite: bool = False) -> Path:
    """Write ``tensors`` and ``header`` (checksums added) to ``path`` atomically; returns the path.

    An existing file is replaced only with ``overwrite=True``
    (:class:`bitsmith.atomic.OverwriteError` otherwise, before anything is written).
    """
    from safetensors.torch import save_file

    header = dict(header, sha256={name: tensor_sha256(t) for name, t in tensors.items()})
    text = json.dumps(header, separators=(",", ":"))
    metadata = {"format": FORMAT, "schema_version": str(SCHEMA_VERSION), HEADER_KEY: text,
                HEADER_SHA256_KEY: hashlib.sha256(text.encode("utf-8")).hexdigest()}
    with atomic.temp_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_header(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The bitsmith JSON header of a packed file (:class:`FormatError` when it is damaged or not one)."""
    table, _ = read_raw_header(path)
    return parse_metadata(path, table)


def header_nbytes(path: Union[str, os.PathLike]) -> int:
    """Bytes that are not tensor data: the 8-byte length prefix and the safetensors JSON header."""
    return 8 + read_raw_header(path)[1]


def read_tensors(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Every tensor of a packed file by name, checksums verified (packed parts as stored), without a model."""
    return read_verified(path)[1]


def read_verified(path: Union[str, os.PathLike]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(header, tensors)`` of a packed file, every tensor's checksum verified (packed parts as stored)."""
    from safetensors import safe_open

    header = read_header(path)
    fields = Fields(path)
    sums = fields.get(header, "sha256", dict, "")
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), "pt") as fh:
            names = list(fh.keys())
            for name in names:
                if name not in sums:
                    raise fields.error(f"sha256.{name}", "missing: every stored tensor needs a checksum")
                tensors[name] = fh.get_tensor(name)
    except FormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged containers
        raise FormatError(f"{path}: damaged safetensors container ({shown(str(exc))})") from None
    for name, digest in sums.items():
        if name not in tensors:
            raise fields.error(f"sha256.{name}", "names a tensor that is not in the file")
        if tensor_sha256(tensors[name]) != digest:
            raise FormatError(f"{path}: tensor {name!r} does not match its SHA-256 checksum; the file is damaged")
    return header, tensors


__all__ = ["header_nbytes", "read_header", "read_tensors", "read_verified", "tensor_sha256", "write"]
