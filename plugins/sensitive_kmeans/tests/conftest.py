"""Fixtures for the bitsmith-sensitive-kmeans tests: a private registry with an exact kmeans stand-in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

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
def one_thread():
    """Tiny models run much faster on one thread, above all on a busy machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
