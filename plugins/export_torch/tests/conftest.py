"""Fixtures for this plugin's tests (helpers live in :mod:`torch_export_helpers`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from bitsmith.plugins import Registry  # noqa: E402
from bitsmith_export_torch import plugin as torch_plugin  # noqa: E402
from torch_export_helpers import Net  # noqa: E402


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def inputs():
    return torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def registry():
    """A registry with the core and this backend only."""
    return Registry(autoload=False, plugins=[torch_plugin])
