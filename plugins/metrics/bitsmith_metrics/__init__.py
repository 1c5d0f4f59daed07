"""bitsmith-metrics: output-fidelity metrics for the mixed-precision sensitivity stage.

Registered through the ``sensitivity_metric`` hook as ``"psnr"``, ``"kl"``,
``"sqnr"`` and ``"mse"`` (see :mod:`bitsmith_metrics.metrics`).
"""

from .metrics import KL, MSE, PSNR, SQNR

__all__ = ["KL", "MSE", "PSNR", "SQNR"]
