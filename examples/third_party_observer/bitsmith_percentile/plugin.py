"""A third-party range observer: percentiles instead of min/max (``QuantizationSpec(observer="percentile")``).

It keeps every value it sees (fine for calibration sets of a few batches) and reports
the 0.1 and 99.9 percentiles, widened to include zero, so rare outliers do not
stretch the quantization range.
"""

from __future__ import annotations

import bitsmith

LOW, HIGH = 0.001, 0.999


class PercentileObserver:
    """``Observer``: ``observe(x, reduce_dims)`` then ``bounds()``."""

    def __init__(self) -> None:
        self._seen = []
        self._dims = None

    def observe(self, x, reduce_dims) -> None:
        """Keep ``x`` with the reduced dimensions moved to the front and flattened."""
        import torch

        x = torch.as_tensor(x).detach().float()
        dims = tuple(sorted(d % x.dim() for d in reduce_dims)) if x.dim() else ()
        kept = [d for d in range(x.dim()) if d not in dims]
        flat = x.permute(*dims, *kept).reshape(-1, *[x.shape[d] for d in kept]) if dims else x.unsqueeze(0)
        if self._dims is not None and flat.shape[1:] != self._seen[0].shape[1:]:
            raise ValueError(f"observed shape {tuple(flat.shape[1:])} after {tuple(self._seen[0].shape[1:])}")
        self._dims = dims
        self._seen.append(flat)

    def bounds(self):
        """``(low, high)`` percentiles of everything observed, per kept dimension; zero always inside."""
        import torch

        if not self._seen:
            raise RuntimeError("PercentileObserver: no tensor observed yet")
        values = torch.cat(self._seen)
        return torch.quantile(values, LOW, dim=0).clamp(max=0), torch.quantile(values, HIGH, dim=0).clamp(min=0)

@bitsmith.hookimpl
def observer(register):
    """Register ``"percentile"`` (a factory: the class)."""
    register("percentile", PercentileObserver)
