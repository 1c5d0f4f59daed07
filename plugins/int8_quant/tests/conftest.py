"""Fixtures: a private registry with this plugin, a test clusterer and a recording export backend."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitsmith
from bitsmith.plugins import Registry
from bitsmith.testing.kernels import quantile_clusterer
from bitsmith_int8_quant import plugin as int8_plugin


class RecordingBackend:
    """Export backend that keeps the model as is and remembers what it was given."""

    description = "test backend: returns the model with its records"

    def __init__(self):
        self.received = []

    def finalize(self, model: nn.Module) -> nn.Module:
        self.received.append(model)
        return model


class TestHelpers:
    """Registers the test clusterer as "kmeans" and recording backends as "coreai" and "torch"."""

    def __init__(self):
        self.backend = RecordingBackend()

    @bitsmith.hookimpl
    def cluster(self, register):
        register("kmeans", quantile_clusterer)

    @bitsmith.hookimpl
    def export_backend(self, register):
        register("coreai", self.backend)
        register("torch", self.backend)


@pytest.fixture
def helpers():
    """The helper plugin instance (its ``backend.received`` lists exported models)."""
    return TestHelpers()


@pytest.fixture
def registry(helpers):
    """A private registry: this plugin plus the test helpers, no entry points."""
    return Registry(autoload=False, plugins=[int8_plugin, helpers])


class SmallNet(nn.Module):
    """Conv -> ReLU -> Conv (residual) -> ConvTranspose -> pooled Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = self.act(self.c1(x))
        y = y + self.c2(y)
        y = self.up(y)
        return self.fc(y.mean((2, 3)))


@pytest.fixture
def small_net():
    """A seeded :class:`SmallNet` in eval mode."""
    torch.manual_seed(0)
    return SmallNet().eval()


@pytest.fixture
def batches():
    """Five seeded calibration batches of (4, 3, 8, 8)."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(5)]
