"""docs/plugins.md lists the whole contract: every protocol member and every check (hook signatures: tests/test_docs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitsmith import hookspecs, protocols, testing

DOC = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()

CAPABILITIES = sorted({cap for caps in protocols.OPTIONAL_CAPABILITIES.values() for cap in caps}, key=lambda c: c.__name__)
ALL_PROTOCOLS = sorted(set(protocols.PROTOCOLS.values()) | set(CAPABILITIES)
                       | {protocols.Palettizer, protocols.Quantizer, protocols.Observer}, key=lambda c: c.__name__)


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS, ids=lambda p: p.__name__)
def test_every_protocol_and_member_is_documented(protocol):
    assert protocol.__name__ in DOC
    for member in protocols.protocol_members(protocol):
        assert f"`{member}" in DOC, f"{protocol.__name__}.{member}"


def test_every_hook_kind_has_a_documented_check():
    assert set(testing.CHECKS) == set(hookspecs.HOOK_NAMES) == set(protocols.PROTOCOLS)
    for check in testing.CHECKS.values():
        assert f"`{check.__name__}(" in DOC, check.__name__


def test_every_example_dist_is_listed_and_exists():
    root = Path(__file__).resolve().parents[2]
    for line in DOC.splitlines():
        if line.startswith("| `examples/"):
            folder = line.split("`")[1]
            assert (root / folder / "pyproject.toml").is_file(), folder
