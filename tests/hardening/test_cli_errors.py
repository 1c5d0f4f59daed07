"""The CLI: user errors exit 2 with a clear message and no traceback; internal errors say how to report them."""

from __future__ import annotations

import pytest

from bitsmith.cli import main

TINY = """
python_path: [{folder}]
model: h16_cli_models:build
data: h16_cli_models:data
steps:
  - type: palettize
    algorithm: kmeans
    config:
      global_config: null
      module_name_configs:
        conv9: {{op_state_spec: {{weight: {{n_bits: 4}}}}}}
        "lin.*": {{op_state_spec: {{weight: {{n_bits: 4}}}}}}
  - type: export
    backend: torch
"""

MODELS = """
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

def data():
    return torch.randn(2, 8)

def broken():
    raise ZeroDivisionError("a bug in the model factory")
"""


@pytest.fixture
def job(tmp_path):
    (tmp_path / "h16_cli_models.py").write_text(MODELS)
    path = tmp_path / "job.yaml"
    path.write_text(TINY.format(folder=tmp_path))
    yield path
    import sys

    sys.modules.pop("h16_cli_models", None)


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and 'File "' not in err


def test_config_matching_no_module_is_an_error_with_strict(job, tmp_path, capsys):
    assert main(["compress", str(job), "-o", str(tmp_path / "strict"), "--strict", "-q"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "steps.0.config.module_name_configs['conv9']: matches no module of Sequential" in err
    assert "lin.*" in err and not (tmp_path / "strict").exists()
    assert main(["compress", str(job), "-o", str(tmp_path / "lenient"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "bitsmith: WARNING: bitsmith.pipeline: steps.0.config.module_name_configs['conv9']: matches no module" \
        in err and "--strict makes this an error" in err


@pytest.mark.parametrize("text, message", [
    (b"steps: [\n", "invalid YAML"),
    (b"steps: []\nsteps: []\n", "duplicate key 'steps'"),
    (b"\xff\xfe", "not UTF-8 text"),
    (b"steps: [{type: export, backend: safetensors, path: ../../x.st}]\n", "is outside the output folder"),
])
def test_bad_pipeline_files_exit_2_without_traceback(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    assert main(["compress", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert message in err


def test_existing_output_and_unwritable_output_are_user_errors(job, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compress", str(job), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["compress", str(job), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "report.json exists; pass overwrite=True (CLI: --overwrite)" in err
    assert main(["compress", str(job), "-o", str(out), "-q", "--overwrite"]) == 0
    capsys.readouterr()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["compress", str(job), "-o", str(blocker), "-q"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert f"output_dir: {blocker} exists and is not a folder" in err


def test_internal_error_says_how_to_report(job, tmp_path, capsys):
    job.write_text(job.read_text().replace("h16_cli_models:build", "h16_cli_models:broken"))
    assert main(["compress", str(job), "-o", str(tmp_path / "o"), "-q"]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "bitsmith: internal error: ZeroDivisionError: a bug in the model factory" in err
    assert "please report it" in err and "rerun with -v" in err
    assert main(["-v", "compress", str(job), "-o", str(tmp_path / "o2"), "-q"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_missing_file_and_bad_values(tmp_path, capsys):
    assert main(["compress", str(tmp_path / "nope.yaml")]) == 2
    assert "no such pipeline file" in capsys.readouterr().err
    assert main(["config", "validate", str(tmp_path / "nope.yaml")]) == 2
    _no_traceback(capsys.readouterr().err)


def test_verbose_flag_shows_bitsmith_diagnostics(job, tmp_path, capsys):
    job.write_text(job.read_text().replace("conv9", "\"0\""))  # a key that matches
    assert main(["compress", str(job), "-o", str(tmp_path / "quiet"), "-q"]) == 0
    assert "bitsmith: INFO" not in capsys.readouterr().err
    assert main(["-v", "compress", str(job), "-o", str(tmp_path / "loud"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "bitsmith: INFO: bitsmith.pipeline: step 1/2: palettize kmeans" in err
    assert "bitsmith: INFO: bitsmith.pipeline: step 2/2: export torch" in err


def test_mixed_precision_cli_target_below_reach_and_path(job, tmp_path, capsys):
    args = ["mixed-precision", "--model", "h16_cli_models:build", "--data", "h16_cli_models:data",
            "--out", str(tmp_path / "mp"), "--no-cache", "--no-progress", "--candidates", "2-bit", "4-bit"]
    assert main([*args, "--target-bpw", "1"]) == 2  # h16_cli_models is not importable without --path
    assert "model: cannot import module 'h16_cli_models'" in capsys.readouterr().err
    assert main([*args, "--target-bpw", "1", "--path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "target_bpw: 1 is below the smallest recipe; reachable with these candidates:" in err
    assert not (tmp_path / "mp").exists()


def test_pipeline_argument_is_always_a_file(tmp_path, capsys):
    job = tmp_path / "job.txt"  # not .yaml: still read as a file, never as YAML text
    job.write_text("steps: [{type: export, backend: torch}]\n")
    assert main(["compress", str(job), "--check"]) == 0
    assert f"{job}: ok (1 steps)" in capsys.readouterr().out
    assert main(["compress", str(tmp_path), "--check"]) == 2
    assert "no such pipeline file" in capsys.readouterr().err
