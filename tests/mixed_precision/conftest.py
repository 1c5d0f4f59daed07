"""Fixtures for the mixed-precision tests: a private registry, small models, data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import mp_helpers  # noqa: E402

import bitsmith_greedy_recipe.plugin as greedy_plugin  # noqa: E402
import bitsmith_metrics.plugin as metrics_plugin  # noqa: E402
import bitsmith_optimal_recipe.plugin as optimal_plugin  # noqa: E402
from bitsmith.plugins import Registry  # noqa: E402


@pytest.fixture
def test_plugin():
    """The test plugin object (``.clusterer.calls``, ``.flaky``)."""
    return mp_helpers.StubPlugin()


@pytest.fixture
def registry(test_plugin):
    """Private registry: test kmeans clusterer/palettizer + metrics + greedy + optimal plugins."""
    return Registry(autoload=False, plugins=[test_plugin, metrics_plugin, greedy_plugin, optimal_plugin])


@pytest.fixture
def resnetish():
    """A small residual CNN (10 logits)."""
    return mp_helpers.make_resnetish()


@pytest.fixture
def images():
    """Two batches of 4 random 3x8x8 images."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)]


@pytest.fixture
def mlp():
    """A picklable MLP (nn.Sequential) for executor tests."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


@pytest.fixture(autouse=True)
def _one_torch_thread(torch_single_thread):
    """Every test here runs torch on one thread (bitsmith.testing's ``torch_single_thread``)."""
