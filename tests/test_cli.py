"""The bitsmith command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bitsmith.cli import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bitsmith.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_plugins_json_with_zero_plugins():
    result = run_cli("plugins", "--json", env={"BITSMITH_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["plugins"] == [] and payload["names"]["cluster"] == []
    human = run_cli("plugins", env={"BITSMITH_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "no plugins installed" in human.stdout


def test_plugins_json_with_a_broken_plugin(tmp_path: Path):
    site = tmp_path / "site"
    info = site / "bitsmith_broken-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsmith-broken\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[bitsmith]\nbroken = bitsmith_broken_mod\n")
    (site / "bitsmith_broken_mod.py").write_text("raise RuntimeError('missing native library')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = run_cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    broken = next(p for p in json.loads(result.stdout)["plugins"] if p["name"] == "broken")
    assert broken["dist"] == "bitsmith-broken" and broken["version"] == "0.3"
    assert broken["error"] == "RuntimeError: missing native library"
    assert "skipping plugin 'broken'" in result.stderr
    table = run_cli("plugins", env=env)
    assert "FAILED: RuntimeError: missing native library" in table.stdout


def test_config_validate_ok_and_error(tmp_path: Path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("kmeans_palettization_config:\n  global_config:\n    op_state_spec:\n      weight: {n_bits: 2}\n")
    assert main(["config", "validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kmeans_palettization_config:") and "n_bits: 2" in out and "cluster_dim: 1" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("kmeans_palettization_config:\n  global_config:\n    op_state_spec:\n      weight: {n_bits: 5}\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "kmeans_palettization_config.global_config.op_state_spec.weight.n_bits: 5 is not one of 1, 2, 3, 4, 6, 8" in err
    assert main(["config", "validate", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_show_defaults_round_trips(capsys):
    from bitsmith.config import KMeansPalettizerConfig, QuantizerConfig, from_yaml

    assert main(["config", "show-defaults"]) == 0
    assert from_yaml(capsys.readouterr().out) == KMeansPalettizerConfig()
    assert main(["config", "show-defaults", "--kind", "quantization"]) == 0
    assert from_yaml(capsys.readouterr().out) == QuantizerConfig()
