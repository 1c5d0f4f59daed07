"""Fixtures for the bitsmith-dkm tests: a private registry with an exact kmeans stand-in and a test backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import dkm_helpers  # noqa: E402

import bitsmith_dkm.plugin as dkm_plugin  # noqa: E402
from bitsmith.plugins import Registry  # noqa: E402


@pytest.fixture
def registry() -> Registry:
    """Core + this plugin + the exact weighted kmeans stand-in + an identity export backend."""
    return Registry(autoload=False, plugins=[dkm_plugin, dkm_helpers.KMeansTestPlugin(),
                                             dkm_helpers.BackendTestPlugin()])


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    """Every test here runs torch on one thread (bitsmith.testing's ``torch_single_thread``)."""
