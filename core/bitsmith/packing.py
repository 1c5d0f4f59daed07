"""Bit-packing of LUT indices and narrow integers: the on-disk layout every file backend shares.

Values of ``n_bits`` bits (1-8) are packed least-significant-bit first into a little-endian
bit stream: value ``i`` occupies bits ``i*n_bits … i*n_bits+n_bits-1``. The stream is padded
with zero values to a whole number of 8-value blocks, so ``count`` values take
``ceil(count / 8) * n_bits`` bytes (at most ``n_bits - 1`` bytes more than ``count * n_bits / 8``)
and every block of 8 values is exactly ``n_bits`` bytes. That block structure is what lets a
graph runtime unpack with a few broadcast integer ops (see the ONNX backend): for block ``b``,
``word = sum(byte[b, k] << 8k)`` and value ``j`` is ``(word >> j*n_bits) & (2**n_bits - 1)``.
Non-byte-aligned widths (3, 6) need no special case; 8-bit values are stored one per byte,
unpadded.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BLOCK = 8
"""Values per packing block; a block of ``n_bits``-bit values is ``n_bits`` bytes."""

CHUNK = BLOCK * 2**18
"""Values packed or unpacked per step (a multiple of :data:`BLOCK`): bounds the temporaries."""


def _check(n_bits: int) -> None:
    if isinstance(n_bits, bool) or not isinstance(n_bits, int) or not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits: {n_bits!r} is not one of 1, 2, 3, 4, 5, 6, 7, 8")


def packed_nbytes(count: int, n_bits: int) -> int:
    """Bytes that :func:`pack_bits` produces for ``count`` values of ``n_bits`` bits."""
    _check(n_bits)
    if n_bits == 8:
        return count
    return math.ceil(count / BLOCK) * n_bits


def pack_bits(values: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Pack the flattened ``values`` (integers in ``[0, 2**n_bits)``) into a 1-D uint8 tensor.

    Works through :data:`CHUNK` values at a time, so the extra memory stays bounded
    (about 30 bytes per chunk value) whatever the tensor's size.
    Raises ``ValueError`` when a value does not fit in ``n_bits`` bits.
    """
    _check(n_bits)
    flat = values.detach().reshape(-1).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**n_bits):
        raise ValueError(f"values must lie in [0, {2**n_bits}) to pack at {n_bits} bits; "
                         f"got range [{int(flat.min())}, {int(flat.max())}]")
    if n_bits == 8:
        return flat.to(torch.uint8, copy=True)
    out: np.ndarray = np.empty(packed_nbytes(flat.numel(), n_bits), dtype=np.uint8)
    shifts = np.arange(BLOCK, dtype=np.uint64) * np.uint64(n_bits)
    byte_shifts = np.arange(n_bits, dtype=np.uint64) * np.uint64(8)
    for start in range(0, flat.numel(), CHUNK):
        chunk = flat[start:start + CHUNK].to(torch.int64).numpy()
        blocks = math.ceil(chunk.size / BLOCK)
        padded = np.zeros(blocks * BLOCK, dtype=np.uint64)
        padded[:chunk.size] = chunk
        words = np.bitwise_or.reduce(padded.reshape(blocks, BLOCK) << shifts, axis=1)  # n_bits*8 bits each
        first = start // BLOCK * n_bits
        out[first:first + blocks * n_bits] = ((words[:, None] >> byte_shifts) & np.uint64(0xFF)).reshape(-1)
    return torch.from_numpy(out)


def unpack_bits(packed: torch.Tensor, n_bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values as a 1-D uint8 tensor (chunked the same way)."""
    _check(n_bits)
    data = packed.detach().reshape(-1).to(device="cpu", dtype=torch.uint8).numpy()
    expected = packed_nbytes(count, n_bits)
    if data.size != expected:
        raise ValueError(f"{count} values at {n_bits} bits take {expected} packed bytes; got {data.size}")
    if n_bits == 8:
        return torch.from_numpy(data.copy())
    out: np.ndarray = np.empty(math.ceil(count / BLOCK) * BLOCK, dtype=np.uint8)
    byte_shifts = np.arange(n_bits, dtype=np.uint64) * np.uint64(8)
    shifts = np.arange(BLOCK, dtype=np.uint64) * np.uint64(n_bits)
    step = CHUNK // BLOCK * n_bits  # packed bytes per chunk
    for first in range(0, data.size, step):
        part = data[first:first + step]
        words = np.bitwise_or.reduce(part.reshape(-1, n_bits).astype(np.uint64) << byte_shifts, axis=1)
        start = first // n_bits * BLOCK
        out[start:start + words.size * BLOCK] = ((words[:, None] >> shifts) & np.uint64(2**n_bits - 1)).reshape(-1)
    return torch.from_numpy(out[:count].copy() if out.size != count else out)


__all__ = ["BLOCK", "CHUNK", "pack_bits", "packed_nbytes", "unpack_bits"]
