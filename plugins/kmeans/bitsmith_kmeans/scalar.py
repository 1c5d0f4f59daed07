"""Exactly optimal 1-D k-means on fp16-rounded values, with optional sample weights.

Algorithm (deterministic, no random init):

1. Round the values to fp16. A tensor whose largest magnitude lies outside
   ``[2**-6, 2**15)`` is first multiplied by a power of two (exact) so that its
   largest magnitude lies in ``[1, 2)``: fp16 rounding then never overflows and
   never drops a tiny-valued tensor into subnormals. Inside that range (almost
   every weight tensor) the values are rounded to fp16 as they are.
2. Histogram: the fp16 bit patterns, read as ``uint16``, are counted with
   ``np.bincount`` over 65536 bins (``np.unique`` for small inputs), with the
   sample weights as bincount weights. ``-0.0`` and ``+0.0`` are merged.
3. Exact dynamic program over the sorted distinct values ``v`` with weights ``w``:
   ``D[j][i] = min_t D[j-1][t] + cost(t, i)``, where ``cost`` is the weighted
   squared error of one cluster holding values ``t..i-1``, read in O(1) from
   prefix sums of ``w``, ``w*v`` and ``w*v*v`` (values centred first for accuracy).
   The cost is a Monge matrix, so each layer is solved by divide and conquer over
   monotone argmins: O(k * n log n) for ``n`` distinct values (at most 63487).
   The kernel is compiled with numba (cached on disk).
4. Centroids are the weighted means of their clusters; every value gets the label
   of its cluster (distinct values with zero weight go to the nearest centroid).

A tensor with at most ``k`` distinct values (compared at full float32 precision)
is returned exactly: those values are the centroids. Sample weights that are all
zero are treated as absent.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

FP16_SAFE_RANGE = (2.0**-6, 2.0**15)
"""Largest magnitudes rounded to fp16 as they are; other tensors are rescaled by a power of two first."""

HISTOGRAM_MIN_SIZE = 1 << 15
"""Inputs with at least this many values use the 65536-bin histogram; smaller ones ``np.unique``."""

_CHUNK = 1 << 20
_SERIAL = 1 << 15  # below torch's parallel grain size (32768): one thread per op
_MIN_RELATIVE_WEIGHT = 1e-9  # smallest weight of a distinct value relative to the total (DP prefix sums)
_kernel = None


def kmeans_1d(x: np.ndarray, k: int, sample_weight: Optional[np.ndarray] = None, *,
              histogram_min_size: int = HISTOGRAM_MIN_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Optimal weighted 1-D k-means of ``x`` on its fp16-rounded values.

    :param x: values, any shape (flattened), float; must be finite.
    :param k: maximum number of clusters (>= 1).
    :param sample_weight: non-negative weight per value (same size as ``x``), or ``None``.
    :param histogram_min_size: size from which the 65536-bin histogram replaces ``np.unique``
        (both give identical results; exposed for tests).
    :returns: ``(centroids, labels)``: float32 ``(m,)`` ascending with ``m <= k``, every
        cluster non-empty; int64 ``(n,)`` labels in ``[0, m)``.
    :raises ValueError: empty or non-finite input, bad ``k`` or bad sample weights.
    """
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1))
    n = x.size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if n == 0:
        raise ValueError("x: cannot cluster an empty tensor")
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("x: contains NaN or infinite values")
    sw = _check_weights(sample_weight, n)
    exponent = _exponent(max(-lo, hi))
    bits = _fp16_bits(x, exponent)
    if n >= histogram_min_size:
        bins, bin_weight, index = _histogram(bits, sw)
    else:
        bins, index = np.unique(bits, return_inverse=True)
        bin_weight = np.bincount(index, weights=sw, minlength=bins.size).astype(np.float64)
    bin_values = bins.view(np.float16).astype(np.float64)
    values, value_of_bin = np.unique(bin_values, return_inverse=True)  # merges -0.0 and +0.0
    weight = np.bincount(value_of_bin, weights=bin_weight, minlength=values.size)
    if values.size <= k:
        exact = np.unique(x)
        if exact.size <= k:
            return exact.astype(np.float32), np.searchsorted(exact, x).astype(np.int64)
        centroids, value_label = values, np.arange(values.size)
    else:
        centroids, value_label = _cluster_values(values, weight, k)
    bin_label = value_label[value_of_bin]
    labels = _expand_labels(bin_label, bins, index, bits)
    return np.ldexp(centroids, -exponent).astype(np.float32), labels


def optimal_boundaries(values: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Cluster boundaries of the optimal weighted k-means of sorted distinct ``values``.

    :param values: float64 ``(n,)``, strictly increasing, with ``k < n < 65535``.
    :param weights: float64 ``(n,)``, all positive.
    :returns: int64 ``(k + 1,)`` with ``b[0] = 0 < b[1] < ... < b[k] = n``; cluster ``j``
        holds ``values[b[j]:b[j+1]]``.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    n = values.size
    if not 1 <= k < n < 65535:
        raise ValueError(f"optimal_boundaries needs 1 <= k < n < 65535, got k={k}, n={n}")
    if k == 1:
        return np.array([0, n], dtype=np.int64)
    return _compiled_kernel()(values, weights, int(k))


# ---------------------------------------------------------------------------- steps


def _check_weights(sample_weight: Optional[np.ndarray], n: int) -> Optional[np.ndarray]:
    if sample_weight is None:
        return None
    sw = np.ascontiguousarray(np.asarray(sample_weight, dtype=np.float64).reshape(-1))
    if sw.size != n:
        raise ValueError(f"sample_weight: expected {n} weights, got {sw.size}")
    if not np.isfinite(sw).all():
        raise ValueError("sample_weight: contains NaN or infinite values")
    if (sw < 0).any():
        raise ValueError("sample_weight: weights must be non-negative")
    return sw if sw.any() else None


def _exponent(max_abs: float) -> int:
    """Power of two to multiply by before fp16 rounding (0 inside :data:`FP16_SAFE_RANGE`)."""
    if max_abs == 0.0 or FP16_SAFE_RANGE[0] <= max_abs < FP16_SAFE_RANGE[1]:
        return 0
    _, e = math.frexp(max_abs)  # max_abs = m * 2**e, m in [0.5, 1)
    return 1 - e


def _fp16_bits(x: np.ndarray, exponent: int) -> np.ndarray:
    """fp16 bit patterns of ``x * 2**exponent`` as uint16 (round to nearest even).

    Converted in pieces of :data:`_SERIAL` values: torch runs an op that small on the
    calling thread, never waiting on an OpenMP team (on a loaded machine one
    parallel conversion of a 50k-value channel group took ~25 ms instead of ~0.1 ms).
    """
    bits = np.empty(x.size, dtype=np.uint16)
    out = torch.from_numpy(bits.view(np.int16)).view(torch.float16)
    src = torch.from_numpy(x)
    scale = 2.0**exponent
    for start in range(0, x.size, _SERIAL):
        piece = src[start:start + _SERIAL]
        out[start:start + _SERIAL].copy_(piece * scale if exponent else piece)
    return bits


def _histogram(bits: np.ndarray, sw: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, None]:
    counts = np.zeros(65536, dtype=np.int64)
    weighted = None if sw is None else np.zeros(65536, dtype=np.float64)
    for start in range(0, bits.size, _CHUNK):
        chunk = bits[start:start + _CHUNK]
        counts += np.bincount(chunk, minlength=65536)
        if weighted is not None:
            weighted += np.bincount(chunk, weights=sw[start:start + _CHUNK], minlength=65536)
    bins = np.flatnonzero(counts).astype(np.uint16)
    bin_weight = (counts if weighted is None else weighted)[bins].astype(np.float64)
    return bins, bin_weight, None


def _cluster_values(values: np.ndarray, weight: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (float64, ascending) and the cluster of every distinct value."""
    positive = weight > 0
    v, w = values[positive], weight[positive]
    # The DP takes segment weights as differences of prefix sums: a weight below the sum's
    # rounding error would make a segment weigh 0. Raise such weights to a tiny floor.
    w = np.maximum(w, w.sum() * _MIN_RELATIVE_WEIGHT)
    if v.size <= k:
        bounds = np.arange(v.size + 1)
    else:
        bounds = optimal_boundaries(v, w, k)
    starts = bounds[:-1]
    centroids = np.add.reduceat(w * v, starts) / np.add.reduceat(w, starts)
    label = np.empty(values.size, dtype=np.int64)
    label[positive] = np.repeat(np.arange(starts.size), np.diff(bounds))
    if not positive.all():  # zero-weight values: nearest centroid
        midpoints = (centroids[1:] + centroids[:-1]) / 2
        label[~positive] = np.searchsorted(midpoints, values[~positive])
    return centroids, label


def _expand_labels(bin_label: np.ndarray, bins: np.ndarray, index: Optional[np.ndarray],
                   bits: np.ndarray) -> np.ndarray:
    """Label of every value: through the ``np.unique`` inverse, or a 65536-entry table gathered in chunks."""
    if index is not None:
        return bin_label[index].astype(np.int64)
    table = np.zeros(65536, dtype=np.int64)
    table[bins] = bin_label
    return table[bits]  # uint16 fancy index: no intp copy of the index array


# ---------------------------------------------------------------------------- DP kernel


def _boundaries_py(v, w, k):  # pragma: no cover - compiled by numba; exercised through optimal_boundaries
    n = v.shape[0]
    total_w = 0.0
    total_wv = 0.0
    for i in range(n):
        total_w += w[i]
        total_wv += w[i] * v[i]
    mean = total_wv / total_w
    p0 = np.zeros(n + 1)
    p1 = np.zeros(n + 1)
    p2 = np.zeros(n + 1)
    for i in range(n):
        c = v[i] - mean
        p0[i + 1] = p0[i] + w[i]
        p1[i + 1] = p1[i] + w[i] * c
        p2[i + 1] = p2[i] + w[i] * c * c
    prev = np.empty(n + 1)
    cur = np.empty(n + 1)
    prev[0] = np.inf
    for i in range(1, n + 1):
        prev[i] = p2[i] - p1[i] * p1[i] / p0[i]
    # opt[j, i]: start of the last cluster of the best j-clustering of values[:i] (leftmost argmin)
    opt = np.zeros((k + 1, n + 1), dtype=np.uint16)
    stack = np.empty((128, 4), dtype=np.int64)
    # Divide and conquer per layer over the monotone argmins opt[j, lo..hi] in [olo, ohi],
    # also bounded below by opt[j-1, i] <= opt[j, i] (more clusters: the last one starts later).
    for j in range(2, k + 1):
        lo0 = n if j == k else j
        stack[0, 0] = lo0
        stack[0, 1] = n
        stack[0, 2] = j - 1
        stack[0, 3] = n - 1
        top = 1
        while top > 0:
            top -= 1
            lo = stack[top, 0]
            hi = stack[top, 1]
            olo = stack[top, 2]
            ohi = stack[top, 3]
            mid = (lo + hi) // 2
            tlo = max(olo, np.int64(opt[j - 1, mid]))
            tend = min(mid - 1, ohi)
            best = np.inf
            arg = tlo
            q0 = p0[mid]
            q1 = p1[mid]
            q2 = p2[mid]
            for t in range(tlo, tend + 1):
                s0 = q0 - p0[t]
                s1 = q1 - p1[t]
                val = prev[t] + (q2 - p2[t]) - s1 * s1 / s0
                if val < best:
                    best = val
                    arg = t
            cur[mid] = best
            opt[j, mid] = arg
            if lo < mid:
                stack[top, 0] = lo
                stack[top, 1] = mid - 1
                stack[top, 2] = olo
                stack[top, 3] = arg
                top += 1
            if mid < hi:
                stack[top, 0] = mid + 1
                stack[top, 1] = hi
                stack[top, 2] = arg
                stack[top, 3] = ohi
                top += 1
        prev, cur = cur, prev
    bounds = np.empty(k + 1, dtype=np.int64)
    bounds[k] = n
    i = n
    for j in range(k, 1, -1):
        i = np.int64(opt[j, i])
        bounds[j - 1] = i
    bounds[0] = 0
    return bounds


def _compiled_kernel():
    global _kernel
    if _kernel is None:
        import numba

        _kernel = numba.njit(cache=True, nogil=True)(_boundaries_py)
    return _kernel
