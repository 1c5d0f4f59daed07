"""``bitsmith mixed-precision`` (the CLI module) and YAML jobs."""

from __future__ import annotations

import argparse
import textwrap

import pytest

from bitsmith import plugins
from bitsmith.cli import mixed_precision as cli
from bitsmith.config import KMeansPalettizerConfig, load
from bitsmith.errors import ConfigError
from bitsmith.mixed_precision import Recipe, SensitivityTable
from bitsmith.mixed_precision.job import load_job


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mp_user_code.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()

        def data():
            return torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mp_user_code"


@pytest.fixture
def default_registry(registry):
    previous = plugins.set_default_registry(registry)
    yield registry
    plugins.set_default_registry(previous)


def parse(argv):
    parser = argparse.ArgumentParser(prog="bitsmith")
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["mixed-precision", *argv])


def test_flags_run_all_stages_and_write_files(user_module, default_registry, tmp_path, capsys):
    out = tmp_path / "out"
    args = parse(["--model", f"{user_module}:build", "--data", f"{user_module}:data", "--target-bpw", "4",
                  "--search", "greedy", "optimal", "--candidates", "2", "4", "6-bit", "--out", str(out),
                  "--cache-dir", str(tmp_path / "cache"), "--pareto", "3", "4", "5", "--no-progress"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "Sensitivity (PSNR dB)" in text and "greedy recipe, target 4 BPW" in text and "optimal recipe" in text
    table = SensitivityTable.load(out / "sensitivity.csv")
    assert table.layer_names == ["0", "2"] and table.candidates == ["2-bit", "4-bit", "6-bit"]
    assert SensitivityTable.load(out / "sensitivity.json") == table
    recipe = Recipe.load(out / "recipe_optimal.yaml")
    assert recipe.bpw <= 4
    config = load(out / "config_optimal.yaml")
    assert isinstance(config, KMeansPalettizerConfig) and set(config.module_name_configs) == {"0", "2"}
    assert (out / "pareto.png").exists()


def test_yaml_job_and_flag_override(user_module, default_registry, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(textwrap.dedent(f"""
        mixed_precision:
          model: {user_module}:build
          data: {user_module}:data
          target_bpw: 6
          search: optimal
          candidates: ["2-bit", {{spec: {{n_bits: 4}}, label: four}}]
          out: {tmp_path / 'out'}
          cache_dir: null
    """))
    args = parse(["--config", str(job), "--target-bpw", "3"])
    loaded = cli.job_from_args(args)
    assert loaded.target_bpw == 3 and loaded.search == ["optimal"] and loaded.cache_dir is None
    assert args.func(args) == 0
    assert "four" in capsys.readouterr().out
    assert Recipe.load(tmp_path / "out" / "recipe_optimal.yaml").target_bpw == 3


@pytest.mark.parametrize("body, message", [
    ("target_bpw: -1", "mixed_precision.target_bpw: expected a positive number, got -1"),
    ("target_bpw: 4\n  engine: turbo", "mixed_precision.engine: 'turbo' is not one of auto, fast, block, local, naive"),
    ("target_bpw: 4\n  colour: red", "mixed_precision.colour: unknown key"),
    ("target_size: 1\n  target_bpw: 4", "give exactly one of target_bpw"),
    ("target_bpw: 4\n  candidates: ['5-bit']", "mixed_precision.candidate '5-bit': bit width"),
])
def test_bad_jobs_name_the_field(tmp_path, body, message):
    job = tmp_path / "job.yaml"
    job.write_text(f"mixed_precision:\n  model: a:b\n  data: c:d\n  {body}\n")
    with pytest.raises(ConfigError, match=message):
        load_job(job)


def test_missing_model_and_bad_callable(tmp_path):
    with pytest.raises(ConfigError, match="model: required"):
        cli.job_from_args(parse(["--data", "a:b", "--target-bpw", "4"]))
    with pytest.raises(ConfigError, match="model: expected 'package.module:function'"):
        cli.job_from_args(parse(["--model", "nocolon", "--data", "a:b", "--target-bpw", "4"]))
    args = parse(["--model", "no_such_module_xyz:f", "--data", "a:b", "--target-bpw", "4"])
    with pytest.raises(ConfigError, match="model: cannot import module 'no_such_module_xyz'"):
        args.func(args)


def test_package_docstring_example_runs(default_registry, tmp_path, monkeypatch):
    import torch
    from torch import nn

    import bitsmith.mixed_precision as mp

    code = mp.__doc__.split("Example::")[1].split("Metrics, searches")[0]
    code = "\n".join(line[4:] for line in code.splitlines())
    torch.manual_seed(0)
    monkeypatch.chdir(tmp_path)
    scope = {"model": nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval(),
             "calibration_batch": torch.randn(8, 16)}
    exec(compile(code, "bitsmith.mixed_precision docstring", "exec"), scope)
    assert (tmp_path / "recipe.yaml").exists() and scope["small"] is not scope["model"]
    assert scope["config"].global_config is None
