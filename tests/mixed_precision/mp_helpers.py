"""Helpers for the mixed-precision tests (importable, also by spawned worker processes)."""

from __future__ import annotations

import torch
from torch import nn

import bitsmith
from bitsmith.palettization import Palettizer
from bitsmith.testing.kernels import quantile_clusterer


class CountingClusterer:
    """Wraps the test clusterer and counts calls (one call per LUT)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, k, *, sample_weight=None, seed=None):
        self.calls += 1
        return quantile_clusterer(x, k, sample_weight=sample_weight, seed=seed)


class StubKMeansPalettizer(Palettizer):
    """Stands in for the kmeans plugin's KMeansPalettizer (same base class, test clusterer)."""

    algorithm = "kmeans"


class FlakyPSNR:
    """PSNR that raises after ``fail_after`` scores (simulates a crash); counts its calls."""

    name = "flaky"
    higher_is_better = True
    unit = "dB"

    def __init__(self):
        from bitsmith_metrics import PSNR

        self._psnr = PSNR()
        self.calls = 0
        self.fail_after = None

    def score(self, reference, output):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return self._psnr.score(reference, output)

    def to_distortion(self, score):
        return self._psnr.to_distortion(score)

    def __repr__(self):
        return "FlakyPSNR()"


class StubPlugin:
    def __init__(self):
        self.clusterer = CountingClusterer()
        self.flaky = FlakyPSNR()

    @bitsmith.hookimpl
    def cluster(self, register):
        register("kmeans", self.clusterer)

    @bitsmith.hookimpl
    def palettizer(self, register):
        register("kmeans", StubKMeansPalettizer)

    @bitsmith.hookimpl
    def sensitivity_metric(self, register):
        register("flaky", self.flaky)


class ResNetish(nn.Module):
    """Conv stem, a residual block with an in-place ReLU and a skip, pooled linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(16, 16, 1))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        z = self.block(y)
        z += y  # in-place add onto a value the block's input also uses
        return self.head(z.mean((2, 3)))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


def make_resnetish():
    torch.manual_seed(0)
    model = ResNetish().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model
