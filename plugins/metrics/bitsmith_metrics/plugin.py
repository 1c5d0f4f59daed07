"""Entry point of bitsmith-metrics: registers the four sensitivity metrics."""

from __future__ import annotations

import bitsmith


@bitsmith.hookimpl
def sensitivity_metric(register):
    """Register ``"psnr"``, ``"kl"``, ``"sqnr"`` and ``"mse"``."""
    from .metrics import KL, MSE, PSNR, SQNR

    register("psnr", PSNR())
    register("kl", KL())
    register("sqnr", SQNR())
    register("mse", MSE())
