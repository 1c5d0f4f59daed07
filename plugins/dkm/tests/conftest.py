"""Fixtures for the bitsmith-dkm tests: a private registry with an exact kmeans stand-in and a test backend."""

from __future__ import annotations

import pytest

import bitsmith_dkm.plugin as dkm_plugin
from bitsmith.plugins import Registry
from bitsmith.testing import palettizer_models as dkm_helpers


@pytest.fixture
def registry() -> Registry:
    """Core + this plugin + the exact weighted kmeans stand-in + an identity export backend."""
    return Registry(autoload=False, plugins=[dkm_plugin, dkm_helpers.KMeansTestPlugin(),
                                             dkm_helpers.BackendTestPlugin()])


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    """Every test here runs torch on one thread (bitsmith.testing's ``torch_single_thread``)."""
