"""Range observers: ``"min_max"`` and ``"moving_average"`` (the ``observer`` hook).

An observer (protocol :class:`bitsmith.protocols.Observer`) sees tensors through
``observe(x, reduce_dims)``, reducing over ``reduce_dims`` (every dim for a
per-tensor range, every dim but the channel for a per-channel one), and reports
``bounds() -> (min, max)`` with the shape of ``x`` minus the reduced dims. The
quantizer turns bounds into scales and zero points (:mod:`.affine`).
"""

from __future__ import annotations

import abc
from typing import Optional, Sequence

import torch


class _RangeObserver(abc.ABC):
    """Shared state and checks of the first-party observers."""

    def __init__(self) -> None:
        self.min_val: Optional[torch.Tensor] = None
        self.max_val: Optional[torch.Tensor] = None
        self.count = 0

    @staticmethod
    def _batch_bounds(x: torch.Tensor, reduce_dims: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().float()
        dims = tuple(reduce_dims)
        if not dims:
            return x.clone(), x.clone()
        return x.amin(dim=dims), x.amax(dim=dims)

    def observe(self, x: torch.Tensor, reduce_dims: Sequence[int]) -> None:
        """Update the range with ``x``, reduced over ``reduce_dims``."""
        if x.numel() == 0:
            return
        lo, hi = self._batch_bounds(x, reduce_dims)
        if self.min_val is not None and lo.shape != self.min_val.shape:
            raise ValueError(f"{type(self).__name__}: observed range of shape {tuple(lo.shape)} after "
                             f"{tuple(self.min_val.shape)}; per-channel observers need a fixed channel count")
        self._update(lo, hi)
        self.count += 1

    @abc.abstractmethod
    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Fold one batch's ``(lo, hi)`` into ``min_val``/``max_val``."""

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(min, max)`` tensors; ``RuntimeError`` before the first observation."""
        if self.min_val is None or self.max_val is None:
            raise RuntimeError(f"{type(self).__name__}: no tensor observed yet")
        return self.min_val.clone(), self.max_val.clone()

    def __repr__(self) -> str:
        if self.min_val is None:
            return f"{type(self).__name__}(empty)"
        return f"{type(self).__name__}(count={self.count}, min={self.min_val.min().item():.4g}, " \
               f"max={self.max_val.max().item():.4g})"


class MinMaxObserver(_RangeObserver):
    """Running extremes: ``min = min(min, min(x))``, ``max = max(max, max(x))``."""

    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)


class MovingAverageObserver(_RangeObserver):
    """Exponential moving average of each batch's extremes.

    The first batch sets the range; every later batch moves it by
    ``averaging_constant`` (``c``, default 0.01, as in PyTorch's
    ``MovingAverageMinMaxObserver`` and coremltools): ``min += c * (min(x) - min)``,
    ``max += c * (max(x) - max)``. One outlier batch barely moves the range.
    """

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant: {averaging_constant!r} must be in (0, 1]")
        self.averaging_constant = averaging_constant

    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)


OBSERVERS = {"min_max": MinMaxObserver, "moving_average": MovingAverageObserver}
"""The observers this plugin registers, by name."""
