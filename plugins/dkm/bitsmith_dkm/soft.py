"""The differentiable k-means step: soft assignment, soft centroid updates, reconstruction.

Shapes: ``x`` (G, n, d) holds the ``n`` vectors of each of ``G`` LUT groups, ``c``
(G, k, d) the centroids of each group, ``inv_temp`` (G, 1, 1) one inverse temperature
per group. With ``D[g, j, i] = |x[g, i] - c[g, j]|^2`` (centroid-major, see :func:`distances`):

* attention ``A = softmax(-D * inv_temp)`` over the ``k`` centroids;
* a soft k-means update ``c' = (A x + eps c) / (sum_i A + eps)`` (the ``eps`` terms
  keep a centroid that no weight attends to where it is, smoothly);
* the reconstruction ``A^T c``: every weight is an attention-weighted mix of centroids.

:func:`dkm_reconstruct` runs ``iterations`` updates then the reconstruction, either
with plain autograd over full ``(G, k, n)`` matrices, or, in memory-saving mode,
through :class:`ChunkedDKM`, a custom autograd Function that walks ``n`` in chunks in
the forward pass (no graph) and recomputes each chunk's attention in the backward
pass, so no ``N x k`` matrix is ever kept: memory is ``O(N + chunk * k)`` instead of
``O(N * k * (iterations + 1))``. Both give the same values and gradients.
"""

from __future__ import annotations

from typing import Iterator

import torch

EPS = 1e-12
"""Attention mass below which a soft centroid update leaves the centroid in place."""


def distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(G, k, n)`` between ``c`` (G, k, d) and the rows of ``x`` (G, n, d).

    Centroid-major, so the softmax over centroids runs along a strided dimension
    with ``n`` contiguous, which is several times faster on CPU than a softmax over a
    tiny last dimension.
    """
    if x.shape[-1] == 1:
        return (x[..., 0].unsqueeze(1) - c).pow(2)
    return (x.transpose(1, 2).unsqueeze(1) - c.unsqueeze(-1)).pow(2).sum(2)


def attention(x: torch.Tensor, c: torch.Tensor, inv_temp: torch.Tensor) -> torch.Tensor:
    """Soft assignment ``softmax(-distance * inv_temp)`` over centroids, ``(G, k, n)``."""
    return torch.softmax(distances(x, c) * (-inv_temp), dim=1)


def update_sums(x: torch.Tensor, c: torch.Tensor, inv_temp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator ``A x`` (G, k, d) and denominator ``sum_i A`` (G, k) of a soft centroid update."""
    a = attention(x, c, inv_temp)
    return a @ x, a.sum(2)


def centroids_from(num: torch.Tensor, den: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """The updated centroids from the sums (a centroid with no attention stays at ``previous``)."""
    return (num + EPS * previous) / (den + EPS).unsqueeze(-1)


def reconstruct(x: torch.Tensor, c: torch.Tensor, inv_temp: torch.Tensor) -> torch.Tensor:
    """Soft reconstruction ``A^T c`` (G, n, d)."""
    a = attention(x, c, inv_temp)
    if c.shape[-1] == 1:
        return (a * c).sum(1).unsqueeze(-1)
    return a.transpose(1, 2) @ c


def chunks(n: int, rows: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in steps of ``rows``."""
    for start in range(0, n, max(1, rows)):
        yield slice(start, min(n, start + rows))


def refine(x: torch.Tensor, c: torch.Tensor, inv_temp: torch.Tensor, iterations: int, rows: int) -> torch.Tensor:
    """``iterations`` soft k-means updates of ``c`` computed chunk by chunk, without autograd."""
    with torch.no_grad():
        for _ in range(iterations):
            num, den = torch.zeros_like(c), c.new_zeros(c.shape[:2])
            for part in chunks(x.shape[1], rows):
                n_, d_ = update_sums(x[:, part], c, inv_temp)
                num += n_
                den += d_
            c = centroids_from(num, den, c)
    return c


def nearest(x: torch.Tensor, c: torch.Tensor, rows: int) -> torch.Tensor:
    """Index ``(G, n)`` of the nearest centroid of every row (ties to the lower index)."""
    out = torch.empty(x.shape[:2], dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for part in chunks(x.shape[1], rows):
            out[:, part] = distances(x[:, part], c).argmin(1)
    return out


def gather(c: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Centroid of every label: ``(G, n, d)`` from ``c`` (G, k, d) and ``labels`` (G, n)."""
    return torch.gather(c, 1, labels.unsqueeze(-1).expand(-1, -1, c.shape[-1]))


class ChunkedDKM(torch.autograd.Function):
    """DKM (``iterations`` soft updates, then reconstruction) with per-chunk recomputation in backward.

    ``ChunkedDKM.apply(x, c0, inv_temp, iterations, rows) -> (y, c_final)``; ``y``
    is differentiable in ``x`` and ``c0``; ``c_final`` (the centroids after the
    updates) is returned without gradient. Saved for backward: ``x``, the ``k``-sized
    centroids and denominators of each update; never an ``N x k`` matrix.
    """

    @staticmethod
    def forward(ctx, x, c0, inv_temp, iterations, rows):  # noqa: D102 - documented on the class
        cs, dens = [c0], []
        with torch.no_grad():
            for _ in range(iterations):
                num, den = torch.zeros_like(c0), c0.new_zeros(c0.shape[:2])
                for part in chunks(x.shape[1], rows):
                    n_, d_ = update_sums(x[:, part], cs[-1], inv_temp)
                    num += n_
                    den += d_
                cs.append(centroids_from(num, den, cs[-1]))
                dens.append(den)
            y = torch.empty_like(x)
            for part in chunks(x.shape[1], rows):
                y[:, part] = reconstruct(x[:, part], cs[-1], inv_temp)
        final = cs[-1].clone()
        ctx.mark_non_differentiable(final)
        ctx.save_for_backward(x, inv_temp, *cs, *dens)
        ctx.iterations, ctx.rows = iterations, rows
        return y, final

    @staticmethod
    def backward(ctx, grad_y, _grad_final):  # noqa: D102
        x, inv_temp, *rest = ctx.saved_tensors
        iterations, rows = ctx.iterations, ctx.rows
        cs, dens = rest[:iterations + 1], rest[iterations + 1:]
        grad_x = torch.zeros_like(x)
        grad_c = torch.zeros_like(cs[-1])
        for part in chunks(x.shape[1], rows):
            with torch.enable_grad():
                xs = x[:, part].detach().requires_grad_(True)
                c = cs[-1].detach().requires_grad_(True)
                gx, gc = torch.autograd.grad(reconstruct(xs, c, inv_temp), (xs, c), grad_y[:, part])
            grad_x[:, part] += gx
            grad_c += gc
        for t in reversed(range(iterations)):
            denom = (dens[t] + EPS).unsqueeze(-1)
            grad_num = grad_c / denom
            grad_den = -(grad_c * cs[t + 1]).sum(-1) / denom.squeeze(-1)
            grad_prev = grad_c * (EPS / denom)
            for part in chunks(x.shape[1], rows):
                with torch.enable_grad():
                    xs = x[:, part].detach().requires_grad_(True)
                    c = cs[t].detach().requires_grad_(True)
                    num, den = update_sums(xs, c, inv_temp)
                    gx, gc = torch.autograd.grad((num, den), (xs, c), (grad_num, grad_den))
                grad_x[:, part] += gx
                grad_prev += gc
            grad_c = grad_prev
        return grad_x, grad_c if ctx.needs_input_grad[1] else None, None, None, None


def dkm_reconstruct(x: torch.Tensor, c0: torch.Tensor, inv_temp: torch.Tensor, iterations: int, *,
                    memory_saving: bool = False, rows: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft DKM reconstruction ``(y, c_final)`` of ``x`` (G, n, d) from centroids ``c0`` (G, k, d).

    ``memory_saving`` uses :class:`ChunkedDKM` with ``rows`` rows of each group per
    chunk; otherwise plain autograd over full matrices. ``c_final`` carries no gradient.
    """
    if memory_saving:
        return ChunkedDKM.apply(x, c0, inv_temp, iterations, rows)
    c = c0
    for _ in range(iterations):
        num, den = update_sums(x, c, inv_temp)
        c = centroids_from(num, den, c)
    return reconstruct(x, c, inv_temp), c.detach()
