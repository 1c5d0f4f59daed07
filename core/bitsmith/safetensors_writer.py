"""Write a safetensors file one tensor at a time, each made just before it is written.

``safetensors.torch.save_file`` needs every tensor in memory at once. When the tensors
are derived data (bit-packed indices of a palettized model: about the compressed size
of the whole model), building them all first costs that much memory on top of the
model. :func:`write_file` takes :class:`PendingTensor` entries instead, known by dtype
and shape up front (for the header) and made one by one while the file is written, so
only one of them exists at a time. The output is a standard safetensors file (8-byte
little-endian header length, JSON header padded with spaces to 8 bytes, then the
tensors' bytes in header order, largest element size first so every tensor is
aligned) that ``safetensors.safe_open`` / ``load_file`` read as usual.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from typing import Callable, Mapping, Optional, Union

import torch
from attrs import define

__all__ = ["PendingTensor", "write_file"]

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}


@define(frozen=True)
class PendingTensor:
    """A tensor known now by ``dtype`` and ``shape`` and made by ``make()`` when it is written."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


def _pending(name: str, value: Union[torch.Tensor, PendingTensor]) -> PendingTensor:
    if isinstance(value, PendingTensor):
        entry = value
    elif isinstance(value, torch.Tensor):
        entry = PendingTensor(value.dtype, tuple(value.shape), lambda: value)
    else:
        raise TypeError(f"tensors[{name!r}]: expected a torch.Tensor or PendingTensor, got {type(value).__name__}")
    if entry.dtype not in _DTYPES:
        raise TypeError(f"tensors[{name!r}]: dtype {entry.dtype} cannot be stored in safetensors")
    return entry


def write_file(tensors: Mapping[str, Union[torch.Tensor, PendingTensor]], path: Union[str, os.PathLike],
               metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``tensors`` (plain or pending) and string ``metadata`` to ``path`` as a safetensors file.

    Pending tensors are made in file order, written and released one at a time.

    :raises TypeError: a value that is neither a tensor nor a :class:`PendingTensor`, a
        dtype safetensors has no name for, or metadata that is not ``str -> str``.
    :raises ValueError: a pending tensor whose ``make()`` returns another dtype or shape
        than it announced (the file is then incomplete; write to a temporary path).
    """
    if sys.byteorder != "little":  # pragma: no cover - safetensors stores little-endian bytes
        raise RuntimeError("write_file needs a little-endian machine")
    entries = {name: _pending(name, value) for name, value in tensors.items()}
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata: expected a mapping of str to str")
    order = sorted(entries, key=lambda name: (-entries[name].dtype.itemsize, name))
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        entry = entries[name]
        size = math.prod(entry.shape) * entry.dtype.itemsize
        header[name] = {"dtype": _DTYPES[entry.dtype], "shape": list(entry.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for name in order:
            entry = entries[name]
            tensor = entry.make()
            if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
                raise ValueError(f"tensors[{name!r}]: announced {entry.dtype} {list(entry.shape)}, made "
                                 f"{tensor.dtype} {list(tensor.shape)}")
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            fh.write(memoryview(data))
            del tensor, data
        fh.flush()
        os.fsync(fh.fileno())
