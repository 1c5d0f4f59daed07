"""Fixtures: a private registry holding only this plugin (isolation from other installed plugins)."""

from __future__ import annotations

import pytest

from bitsmith.plugins import Registry
from bitsmith_kmeans import plugin as kmeans_plugin


@pytest.fixture
def registry():
    """A registry with the core and bitsmith-kmeans only (no entry points)."""
    return Registry(autoload=False, plugins=[kmeans_plugin])
