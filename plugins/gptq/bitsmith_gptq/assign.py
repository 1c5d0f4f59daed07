"""GPTQ-style choice of LUT indices (Frantar et al., "GPTQ", 2023, with a fixed LUT instead of a grid).

Given weight rows ``W`` (``groups x rows x D``), the LUT values each row may use
and the inputs' second moments ``H = E[x x^T]`` (``groups x D x D``), columns are
chosen one at a time: column ``j`` takes the nearest LUT value of each row, and its
rounding error, scaled by the inverse Hessian, is pushed onto the columns not yet
chosen, so the layer's output error ``(w - q)^T H (w - q)`` stays small (the
optimal-brain-surgeon update). Nearest-value rounding is the special case ``H = I``.
Work is blocked (``block_size`` columns at a time, the rest updated by one matmul)
and runs on the weight's device in its precision (float32 for float32, bf16 or fp16
weights; float64 only when given float64). The inverse-Hessian factor, an O(D^3)
step that the damping keeps well conditioned but that float32 can still break on
near-singular input statistics, is computed in float64 on the Hessian's device.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["assign_indices", "inverse_hessian_factor", "refit_scales"]


def inverse_hessian_factor(hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, per group (``groups x D x D``).

    Columns no input ever reaches (zero diagonal) get a unit diagonal: their rows are
    simply rounded to the nearest value.
    """
    if hessian.dim() != 3 or hessian.shape[1] != hessian.shape[2]:
        raise ValueError(f"hessian: expected (groups, D, D), got {tuple(hessian.shape)}")
    if not damp > 0:
        raise ValueError(f"damp: expected a positive number, got {damp!r}")
    h = hessian.double().clone()
    diag = h.diagonal(dim1=1, dim2=2)
    dead = diag <= 0
    diag[dead] = 1.0
    mean = diag.mean(dim=1, keepdim=True)
    diag.add_(damp * mean)
    factor = torch.linalg.cholesky(h)
    inverse = torch.cholesky_inverse(factor)
    return torch.linalg.cholesky(inverse, upper=True)


def assign_indices(weight: torch.Tensor, luts: torch.Tensor, hinv_factor: torch.Tensor,
                   order: Optional[torch.Tensor] = None, block_size: int = 128) -> torch.Tensor:
    """LUT indices of ``weight`` with GPTQ error compensation.

    :param weight: ``(groups, rows, D)`` weights (already divided by any per-channel scale).
    :param luts: ``(groups, rows, K)`` the LUT values row ``r`` of group ``g`` may use.
    :param hinv_factor: ``(groups, D, D)`` from :func:`inverse_hessian_factor`, in the
        column order given by ``order``.
    :param order: ``(groups, D)`` column permutation to process in (e.g. decreasing
        ``diag H``), or ``None`` for the natural order.
    :returns: ``(groups, rows, D)`` int64 indices into ``luts`` (natural column order).
    """
    groups, rows, d = weight.shape
    if luts.shape[:2] != (groups, rows) or hinv_factor.shape != (groups, d, d):
        raise ValueError(f"shapes: weight {tuple(weight.shape)}, luts {tuple(luts.shape)}, hinv_factor "
                         f"{tuple(hinv_factor.shape)} do not match")
    w = weight.to(_work_dtype(weight)).clone()
    hinv_factor = hinv_factor.to(w)
    if order is not None:
        order = order.to(w.device)
        w = torch.gather(w, 2, order.unsqueeze(1).expand(groups, rows, d))
    values = luts.to(w)
    out = torch.empty(groups, rows, d, dtype=torch.long, device=w.device)
    for start in range(0, d, block_size):
        stop = min(start + block_size, d)
        block = w[:, :, start:stop].clone()
        errors = torch.empty_like(block)
        hinv = hinv_factor[:, start:stop, start:stop]
        for j in range(stop - start):
            column = block[:, :, j]
            index = (column.unsqueeze(-1) - values).abs().argmin(-1)
            out[:, :, start + j] = index
            chosen = torch.gather(values, 2, index.unsqueeze(-1)).squeeze(-1)
            err = (column - chosen) / hinv[:, j, j].unsqueeze(-1)
            block[:, :, j:] -= err.unsqueeze(-1) * hinv[:, j, j:].unsqueeze(1)
            errors[:, :, j] = err
        if stop < d:
            w[:, :, stop:] -= errors @ hinv_factor[:, start:stop, stop:]
    if order is not None:
        natural = torch.empty_like(out)
        natural.scatter_(2, order.unsqueeze(1).expand(groups, rows, d), out)
        out = natural
    return out


def refit_scales(weight: torch.Tensor, normalized: torch.Tensor, hessian: torch.Tensor,
                 scales: torch.Tensor) -> torch.Tensor:
    """Per-row scales minimizing ``(w - s q)^T H (w - s q)``: ``s = q^T H w / q^T H q``.

    :param weight: ``(groups, rows, D)`` original weights; ``normalized``: the chosen
        LUT values ``q`` (same shape); ``hessian``: ``(groups, D, D)``; ``scales``:
        ``(groups, rows)`` current scales, kept where the refit is not positive and finite.
    """
    w = weight.to(_work_dtype(weight))
    q, h = normalized.to(w), hessian.to(w)
    hq = q @ h  # (groups, rows, D); H is symmetric
    num = (hq * w).sum(-1)
    den = (hq * q).sum(-1)
    fitted = num / den
    ok = torch.isfinite(fitted) & (fitted > 0) & (den > 0)
    return torch.where(ok, fitted, scales.to(w)).to(device=scales.device, dtype=scales.dtype)


def _work_dtype(weight: torch.Tensor) -> torch.dtype:
    """float64 for float64 weights, else float32 (half-precision weights are computed in float32)."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32
