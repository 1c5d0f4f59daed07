"""Fixtures for the bitsmith-sensitive-kmeans tests: a private registry with an exact kmeans stand-in."""

from __future__ import annotations

import pytest

import bitsmith_sensitive_kmeans.plugin as skm_plugin
from bitsmith.plugins import Registry
from bitsmith.testing import palettizer_models as skm_helpers


@pytest.fixture
def registry() -> Registry:
    """Core + this plugin + the exact weighted kmeans stand-in + an identity export backend."""
    return Registry(autoload=False, plugins=[skm_plugin, skm_helpers.KMeansTestPlugin(),
                                             skm_helpers.BackendTestPlugin()])


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    """Every test here runs torch on one thread (bitsmith.testing's ``torch_single_thread``)."""
