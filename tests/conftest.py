"""Shared fixtures for the core tests."""

from __future__ import annotations

import pytest

from bitsmith.testing.kernels import quantile_clusterer as nearest_quantile_clusterer


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
