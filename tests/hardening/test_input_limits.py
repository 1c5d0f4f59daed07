"""Input limits: duplicate keys, size, depth, alias bombs, non-UTF-8, non-finite or unreachable targets."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import bitsmith
from bitsmith import safe_yaml
from bitsmith.config import load
from bitsmith.errors import ConfigError
from bitsmith.mixed_precision.job import load_job
from bitsmith.mixed_precision.targets import check_target, reachable_range
from bitsmith.pipeline import load_pipeline

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


def _error(text, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        safe_yaml.load(text, **kwargs)
    (line,) = info.value.lines
    return line


def test_duplicate_keys_are_errors_everywhere(tmp_path):
    assert _error("a: 1\nb:\n  c: 2\n  c: 3\n") == ("<string>:4:3: duplicate key 'c' (first at line 3); each key may "
                                                   "appear once")
    config = tmp_path / "c.yaml"
    config.write_text("kmeans_palettization_config:\n  global_config:\n    op_state_spec:\n      weight: {n_bits: 2}\n"
                      "  global_config: null\n")
    with pytest.raises(ConfigError, match="duplicate key 'global_config' \\(first at line 2\\)"):
        load(config)
    job = tmp_path / "job.yaml"
    job.write_text("mixed_precision:\n  model: a:b\n  data: a:b\n  target_bpw: 4\n  target_bpw: 2\n")
    with pytest.raises(ConfigError, match="job.yaml:5:3: duplicate key 'target_bpw'"):
        load_job(job)
    with pytest.raises(ConfigError, match="duplicate key 'steps'"):
        load_pipeline("steps: [{type: export, backend: torch}]\nsteps: []\n", check=False)


def test_merge_keys_keep_their_meaning():
    assert safe_yaml.load("base: &b {n_bits: 4, x: 1}\nw: {<<: *b, n_bits: 2}\n")["w"] == {"n_bits": 2, "x": 1}


def test_alias_bomb_depth_and_size_are_capped(tmp_path):
    assert "more than 1000000 nodes once aliases are expanded" in _error(ALIAS_BOMB)
    assert "nesting deeper than 64 levels" in _error("[" * 100 + "]" * 100)
    assert "nesting deeper than 5 levels once aliases are expanded" in _error(
        "a: &a [[[1]]]\nb: [[*a]]\n", limits=safe_yaml.YamlLimits(max_depth=5))
    assert "recursive alias" in _error("&a [1, *a]")
    assert "larger than the 10-byte limit" in _error("a: 12345678901", limits=safe_yaml.YamlLimits(max_bytes=10))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("pipeline:\n  x: 1\n" + ALIAS_BOMB)
    with pytest.raises(ConfigError, match="alias bomb"):
        load_pipeline(bomb, check=False)


def test_non_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("steps: []  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, check=False)
    assert info.value.lines == [f"{path}: not UTF-8 text (byte 16 is 0xe9); save the file as UTF-8"]
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load(path)


def test_long_values_are_shortened():
    huge = "x" * 500_000
    with pytest.raises(ConfigError) as info:
        load_pipeline({"steps": [{"type": huge}]}, check=False)
    assert len(str(info.value)) < 400 and "characters>" in str(info.value)
    assert len(safe_yaml.short("y" * 10_000)) < 140
    for loader, doc in [(load, {"kmeans_palettization_config": {"module_name_configs": {"a": [huge] * 4}}}),
                        (load, {huge: 1}), (load_job, {"model": huge, "data": "a:b", "target_bpw": 4})]:
        with pytest.raises(ConfigError) as info:
            loader(doc)
        assert all(len(line) <= 1000 for line in info.value.lines) and "characters cut>" in str(info.value)


@pytest.mark.parametrize("value", [".nan", ".inf", "-1", "0"])
def test_non_finite_targets_are_refused_at_load(value):
    text = f"data: torch:randn\nsteps: [{{type: mixed_precision, target_bpw: {value}}}]\n"
    with pytest.raises(ConfigError, match="steps.0.target_bpw: expected a finite positive number"):
        load_pipeline(text, check=False)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def test_reachable_range_from_specs():
    reach = reachable_range(_mlp(), ["2-bit", "6-bit"])
    # 2-bit: indices 2 bits/weight + a 4-entry fp32 LUT per layer; 6-bit: 6 bits + 64 entries
    assert reach.weights == 64 * 64 + 64 * 10
    assert reach.min_bits == 2 * reach.weights + 2 * 4 * 32
    assert reach.max_bits == 6 * reach.weights + 2 * 64 * 32
    assert reach.uncompressed_bits == (64 + 10) * 32  # the biases


def test_unreachable_target_fails_before_the_sensitivity_stage(tmp_path):
    pipeline = {"data": "torch:randn", "data_kwargs": {"size": [2, 64]},
                "steps": [{"type": "mixed_precision", "target_bpw": 1.5, "candidates": ["2-bit", "4-bit"],
                           "cache_dir": None}]}
    with pytest.raises(ConfigError) as info:
        bitsmith.compress(_mlp(), pipeline, output_dir=tmp_path)
    assert info.value.lines == ["steps.0.target_bpw: 1.5 is below the smallest recipe; reachable with these "
                                "candidates: 2.054 to 4.216 BPW all-in (0.001442 to 0.002663 MiB)"]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="target_size: 0.001 is below the smallest recipe"):
        check_target(_mlp(), ["2-bit", "4-bit"], target_size=0.001)
    assert check_target(_mlp(), ["2-bit", "4-bit"], target_bpw=3).min_bpw == pytest.approx(2.054, abs=1e-3)


def test_sensitivity_table_json_is_checked(tmp_path):
    from bitsmith.mixed_precision.table import SensitivityTable

    path = tmp_path / "t.json"
    path.write_text('{"schema_version": 1, "schema_version": 2}')
    with pytest.raises(ConfigError, match="t.json: duplicate key 'schema_version'"):
        SensitivityTable.load(path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nesting too deep"):
        SensitivityTable.load(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        SensitivityTable.load(path)
