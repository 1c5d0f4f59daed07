"""docs/transformers.md runs: its python blocks, top to bottom, in one namespace in a scratch folder."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "transformers.md"


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_transformers_page_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) == 7
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_transformers"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, block in enumerate(blocks):
            exec(compile(block, f"{PAGE.name} block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "transformer.wte.weight: 1000 channels along axis 0 are not divisible by group_size 16" in out
    assert "PalettizedTensor: 4-bit g16a1" in out and "whole model" in out
    assert (tmp_path / "gpt2-w4" / "bitsmith_model.safetensors").is_file()
