"""Shared fixtures for the core tests."""

from __future__ import annotations

import pytest
import torch


def nearest_quantile_clusterer(x, k, *, sample_weight=None, seed=None):
    """A tiny deterministic clusterer for core tests: quantile centroids, nearest assignment."""
    x = torch.as_tensor(x, dtype=torch.float32)
    uniq = torch.unique(x, dim=0)
    if uniq.shape[0] <= k:
        centroids = uniq
    else:
        order = torch.argsort(x[:, 0])
        picks = order[torch.linspace(0, x.shape[0] - 1, k).round().long()]
        centroids = torch.unique(x[picks], dim=0)
    labels = torch.cdist(x, centroids).argmin(1)
    used, labels = torch.unique(labels, return_inverse=True)
    return centroids[used], labels


@pytest.fixture
def quantile_clusterer():
    """The test clusterer as a callable."""
    return nearest_quantile_clusterer


@pytest.fixture
def core_registry(bitsmith_registry):
    """A fresh default registry holding only the test clusterer, registered as "kmeans"."""
    import bitsmith

    class TestClusterers:
        @bitsmith.hookimpl
        def cluster(self, register):
            register("kmeans", nearest_quantile_clusterer)

    bitsmith_registry.register(TestClusterers(), name="test-clusterers")
    return bitsmith_registry
