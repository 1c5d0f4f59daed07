"""Docs stay in step with the code: every hook is documented with its signature."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from bitsmith import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_every_hook_is_documented_with_its_signature(hook):
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}"
    assert f"`{signature}`" in DOCS.read_text(), f"docs/plugins.md lacks `{signature}`"


def test_hook_names_match_the_spec_module():
    specs = {name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "bitsmith_spec")}
    assert specs == set(hookspecs.HOOK_NAMES)


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_hookspec_docstrings_have_the_same_parts(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert "Called:" in doc and ":param register:" in doc and "Changed in" in doc
