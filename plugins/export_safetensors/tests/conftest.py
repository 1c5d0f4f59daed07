"""Fixtures of this backend's tests; the model, clusterer and quantizer live in ``bitsmith.testing.file_backend_models``."""

from __future__ import annotations

import pytest
import torch

from bitsmith.testing.file_backend_models import Net, apply_quantized, lloyd, make_net


@pytest.fixture
def net() -> Net:
    """A fresh deterministic model."""
    return make_net()


@pytest.fixture
def inputs() -> torch.Tensor:
    """A batch of inputs for :class:`Net`."""
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def clusterer():
    """The deterministic :func:`lloyd` clusterer."""
    return lloyd


@pytest.fixture
def factory():
    """:func:`make_net`, the model factory passed to ``bitsmith.load``."""
    return make_net


@pytest.fixture
def quantize():
    """:func:`apply_quantized`: ``quantize(model, module_name, spec)``."""
    return apply_quantized
