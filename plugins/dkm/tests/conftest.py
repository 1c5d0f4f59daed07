"""Fixtures for the bitsmith-dkm tests: a private registry with an exact kmeans stand-in and a test backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

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
def one_thread():
    """Tiny models run much faster on one thread, above all on a busy machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
