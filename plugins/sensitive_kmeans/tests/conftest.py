"""Fixtures for the bitsmith-sensitive-kmeans tests: a private registry with an exact kmeans stand-in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import skm_helpers  # noqa: E402

import bitsmith_sensitive_kmeans.plugin as skm_plugin  # noqa: E402
from bitsmith.plugins import Registry  # noqa: E402


@pytest.fixture
def registry() -> Registry:
    """Core + this plugin + the exact weighted kmeans stand-in + an identity export backend."""
    return Registry(autoload=False, plugins=[skm_plugin, skm_helpers.KMeansTestPlugin(),
                                             skm_helpers.BackendTestPlugin()])


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    """Every test here runs torch on one thread (bitsmith.testing's ``torch_single_thread``)."""
