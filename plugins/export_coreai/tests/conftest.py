"""Fixtures for this plugin's tests (helpers live in :mod:`bitsmith.testing.backend_models`)."""

from __future__ import annotations

import pytest
import torch

from bitsmith.plugins import Registry
from bitsmith.testing.backend_models import Net
from bitsmith_export_coreai import plugin as coreai_plugin


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
    return Registry(autoload=False, plugins=[coreai_plugin])
