"""Plugin config sections and per-layer algorithms validate in a fresh process, with path-precise errors.

The YAML documented by each algorithm plugin (its config module's docstring, the
``::`` block) must load with ``bitsmith.config.load`` and pass ``bitsmith config
validate`` in a new interpreter, where no plugin has been imported yet.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

PLUGIN_CONFIGS = {
    "sensitive_kmeans_palettization_config": "bitsmith_sensitive_kmeans.config",
    "dkm_palettization_config": "bitsmith_dkm.config",
    "gptq_palettization_config": "bitsmith_gptq.config",
    "refine_palettization_config": "bitsmith_refine.config",
}

MIXED = """\
kmeans_palettization_config:
  global_config: {op_state_spec: {weight: {n_bits: 4}}}
  module_name_configs:
    conv1:
      algorithm: sensitive_kmeans
      options: {outlier_fraction: 0.01}
      op_state_spec: {weight: {n_bits: 3}}
    'layer\\d\\.fc':
      algorithm: gptq
      options: {damp: 0.02, act_order: false}
      op_state_spec: {weight: {n_bits: 4, enable_per_channel_scale: true}}
    head:
      algorithm: dkm
      options: {temperature: 0.1}
"""


def _documented_yaml(module_name: str) -> str:
    """The first ``::`` literal block of a module docstring."""
    doc = importlib.import_module(module_name).__doc__
    block = doc.split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip() + "\n"


BAD = [
    (MIXED.replace("outlier_fraction: 0.01", "outlier_fraction: 0.7"),
     "kmeans_palettization_config.module_name_configs.conv1.options.outlier_fraction: 0.7 is not in [0, 0.5)"),
    (MIXED.replace("algorithm: gptq", "algorithm: gtpq"),
     "kmeans_palettization_config.module_name_configs.layer\\d\\.fc.algorithm: 'gtpq' is not a registered "
     "palettizer (did you mean 'gptq'?)"),
    (MIXED.replace("damp: 0.02", "dampening: 0.02"),
     "kmeans_palettization_config.module_name_configs.layer\\d\\.fc.options.dampening: unknown key"),
    ("dkm_palettization_config:\n  dkm: {temperature: -1}\n", "dkm_palettization_config.dkm.temperature: -1"),
    ("gptq_palettization_config:\n  gptq: {block_size: 0}\n",
     "gptq_palettization_config.gptq.block_size: expected a positive integer, got 0"),
    ("refine_palettization_config:\n  refine: {steps: 0}\n",
     "refine_palettization_config.refine.steps: expected a positive integer, got 0"),
]

FRESH_LOAD = """
import json, sys
import bitsmith.config as c
out = []
for path in sys.argv[1:]:
    try:
        cfg = c.load(path)
    except c.ConfigError as exc:
        out.append({"error": str(exc)})
        continue
    scopes = {k: [v.algorithm, type(v.options).__name__] for k, v in cfg.module_name_configs.items()}
    out.append({"class": type(cfg).__module__ + "." + type(cfg).__name__, "scopes": scopes,
                "round_trip": c.load(c.dump(cfg)) == cfg})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def plugins_installed():
    for module in PLUGIN_CONFIGS.values():
        pytest.importorskip(module)


def test_documented_and_mixed_configs_load_in_a_fresh_process(plugins_installed, tmp_path):
    texts = [_documented_yaml(PLUGIN_CONFIGS[key]) for key in sorted(PLUGIN_CONFIGS)] + [MIXED]
    texts += [bad for bad, _ in BAD]
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"config{i}.yaml")
        paths[-1].write_text(text)
    for key, text in zip(sorted(PLUGIN_CONFIGS), texts):
        assert text.startswith(f"{key}:"), text
    run = subprocess.run([sys.executable, "-c", FRESH_LOAD, *map(str, paths)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    for key, result in zip(sorted(PLUGIN_CONFIGS), results):
        assert result["class"].startswith(PLUGIN_CONFIGS[key] + ".") and result["round_trip"], result
    mixed = results[len(PLUGIN_CONFIGS)]
    assert mixed["round_trip"] and mixed["scopes"] == {
        "conv1": ["sensitive_kmeans", "SKMOptions"], "layer\\d\\.fc": ["gptq", "GPTQOptions"],
        "head": ["dkm", "DKMOptions"]}
    for (_, message), result in zip(BAD, results[len(PLUGIN_CONFIGS) + 1:]):
        assert message in result.get("error", ""), (message, result)


@pytest.mark.slow
def test_cli_validate_in_a_fresh_process(plugins_installed, tmp_path):
    good, bad = tmp_path / "mixed.yaml", tmp_path / "bad.yaml"
    good.write_text(MIXED)
    bad.write_text(BAD[0][0])
    ok = subprocess.run([sys.executable, "-m", "bitsmith.cli", "config", "validate", str(good)],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("kmeans_palettization_config:") and "algorithm: gptq" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "bitsmith.cli", "config", "validate", str(bad)],
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and BAD[0][1] in failed.stdout + failed.stderr


def test_options_without_an_algorithm_or_for_the_wrong_one_are_refused(plugins_installed):
    from bitsmith.config import ConfigError, ModuleKMeansPalettizerConfig, load

    with pytest.raises(ValueError, match="options: given without an algorithm"):
        ModuleKMeansPalettizerConfig(options={"damp": 0.1})
    with pytest.raises(ConfigError, match=r"module_name_configs\.fc\.options\.damp: unknown key"):
        load({"kmeans_palettization_config": {"module_name_configs": {
            "fc": {"algorithm": "sensitive_kmeans", "options": {"damp": 0.1}}}}})
    with pytest.raises(ConfigError, match="top level: expected one of the keys .*gptq_palettization_config"):
        load({"gptq_palettization": {}})
