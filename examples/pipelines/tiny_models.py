"""A small model and calibration data for the example pipelines (fast enough for tests).

``build()`` returns a deterministic 3-conv + linear classifier (16 classes) for 3x16x16 images;
``calibration(n_batches, batch_size)`` returns that many seeded random batches.
"""

from __future__ import annotations

import torch
from torch import nn


def build(seed: int = 0) -> nn.Module:
    """A deterministic small convnet (about 26k weights) in eval mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 16),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def calibration(n_batches: int = 4, batch_size: int = 4) -> list[torch.Tensor]:
    """``n_batches`` seeded batches of shape ``(batch_size, 3, 16, 16)``."""
    generator = torch.Generator().manual_seed(1234)
    return [torch.randn(batch_size, 3, 16, 16, generator=generator) for _ in range(n_batches)]
