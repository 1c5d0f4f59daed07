"""No implicit imports: a folder next to a pipeline file (or the current folder) never shadows a library."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bitsmith
from bitsmith.errors import ConfigError
from bitsmith.pipeline import load_pipeline

BITSMITH = Path(sys.executable).with_name("bitsmith")

# ``colorsys`` is a standard-library module that bitsmith itself never imports, so the
# pipeline's own reference is the first import of that name in the process.
PIPELINE = """
pipeline:
  model: colorsys:rgb_to_hsv
  steps:
    - type: export
      backend: torch
"""


def _shadowing_package(folder: Path) -> Path:
    marker = folder / "SHADOW_RAN"
    package = folder / "colorsys"
    package.mkdir()
    (package / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef rgb_to_hsv():\n    return None\n")
    return marker


@pytest.mark.skipif(not BITSMITH.exists(), reason="the bitsmith console script is not installed")
def test_package_next_to_pipeline_file_is_not_imported(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    marker = _shadowing_package(jobs)
    (jobs / "job.yaml").write_text(PIPELINE)
    # the pipeline's folder is also the current folder: neither may be put on sys.path
    # no plugins: quick to start; the missing backend is reported, the model reference resolves
    env = {**os.environ, "BITSMITH_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run([str(BITSMITH), "compress", str(jobs / "job.yaml"), "--check"], cwd=jobs,
                            capture_output=True, text=True, env=env)
    assert not marker.exists(), "the package next to the pipeline file ran its __init__"
    assert result.returncode == 2
    assert "steps.0.backend: 'torch' is not a registered export backend" in result.stderr
    assert "model:" not in result.stderr  # the standard library's colorsys was found instead


def _local_models(folder: Path) -> None:
    (folder / "h16_local_models.py").write_text(textwrap.dedent("""
        import torch

        def build():
            return torch.nn.Linear(3, 2)
    """))


def test_python_path_is_opt_in_relative_to_the_file_and_temporary(tmp_path):
    (tmp_path / "src").mkdir()
    _local_models(tmp_path / "src")
    before = list(sys.path)
    job = tmp_path / "job.yaml"
    job.write_text("model: h16_local_models:build\nsteps: [{type: export, backend: torch}]\n")
    with pytest.raises(ConfigError, match="model: cannot import module 'h16_local_models'"):
        load_pipeline(job)
    job.write_text("python_path: [src]\nmodel: h16_local_models:build\nsteps: [{type: export, backend: torch}]\n")
    config = load_pipeline(job)
    assert config.python_path == [str((tmp_path / "src").resolve())]
    assert sys.path == before
    result = bitsmith.compress(None, job, output_dir=tmp_path / "out")
    assert isinstance(result.model, __import__("torch").nn.Linear)
    assert sys.path == before
    sys.modules.pop("h16_local_models", None)


def test_cli_path_option(tmp_path, monkeypatch, capsys):
    from bitsmith.cli import main

    (tmp_path / "src").mkdir()
    _local_models(tmp_path / "src")
    job = tmp_path / "job.yaml"
    job.write_text("model: h16_local_models:build\nsteps: [{type: export, backend: torch}]\n")
    monkeypatch.chdir(tmp_path / "src")  # the current folder is not searched either
    before = list(sys.path)
    assert main(["compress", str(job), "--check"]) == 2
    assert "model: cannot import module 'h16_local_models'" in capsys.readouterr().err
    assert main(["compress", str(job), "--check", "--path", str(tmp_path / "src")]) == 0
    assert "ok (1 steps)" in capsys.readouterr().out
    assert sys.path == before
    sys.modules.pop("h16_local_models", None)
