"""Every implementation the installed plugins register passes its hook's ``bitsmith.testing`` contract check."""

from __future__ import annotations

import pytest
import torch

from bitsmith import plugins, testing
from bitsmith.protocols import PROTOCOLS, conformance

REGISTRY = plugins.Registry()
PAIRS = [(kind, name) for kind in PROTOCOLS for name in REGISTRY.names(kind)]
SLOW = {("export_backend", "coreml")}  # a Core ML conversion takes ~15 s


@pytest.fixture(autouse=True)
def _one_thread(torch_single_thread):
    yield


def test_every_hook_kind_has_a_first_party_implementation_and_a_check():
    assert {kind for kind, _ in PAIRS} == set(PROTOCOLS) == set(testing.CHECKS)


@pytest.mark.parametrize("kind, name", [pytest.param(k, n, marks=[pytest.mark.slow] if (k, n) in SLOW else [],
                                                      id=f"{k}:{n}") for k, n in PAIRS])
def test_first_party_implementation_passes_its_contract_check(kind, name, tmp_path):
    impl = REGISTRY.get(kind, name)
    assert conformance(kind, impl) == []
    if kind in ("palettizer", "quantizer"):
        data = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
        testing.CHECKS[kind](impl, data if kind == "palettizer" else data[0], registry=REGISTRY)
    elif kind == "export_backend":
        testing.check_export_backend(impl, tmp_path)
    else:
        testing.CHECKS[kind](impl)
