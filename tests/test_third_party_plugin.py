"""The out-of-tree example plugins (one dist per hook kind) install like third-party dists and work end to end.

All example dists under ``examples/`` are pip-installed (no network, no build
isolation) into one private target directory, which is put on ``sys.path``; the
default registry then discovers them through their entry points. Each passes its
hook's contract check, and together they run pipelines (palettize, mixed precision,
quantize, export and load back) selected by name only.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import bitsmith
from bitsmith import compressed, plugins, testing

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DISTS = {  # example folder -> (dist, module prefix, {hook: [names]})
    "third_party_plugin": ("bitsmith-uniform-example", "bitsmith_uniform", {"cluster": ["uniform"],
                                                                          "palettizer": ["uniform"]}),
    "third_party_metric": ("bitsmith-cosine-example", "bitsmith_cosine", {"sensitivity_metric": ["cosine"]}),
    "third_party_search": ("bitsmith-marginal-example", "bitsmith_marginal", {"recipe_search": ["marginal"]}),
    "third_party_backend": ("bitsmith-npz-example", "bitsmith_npz", {"export_backend": ["npz"]}),
    "third_party_quantizer": ("bitsmith-absmax-example", "bitsmith_absmax", {"quantizer": ["absmax"]}),
    "third_party_observer": ("bitsmith-percentile-example", "bitsmith_percentile", {"observer": ["percentile"]}),
}


@pytest.fixture(scope="module")
def installed_examples(tmp_path_factory):
    """pip-install every example dist into one private target directory (one pip run)."""
    target = tmp_path_factory.mktemp("site")
    sources = []
    for folder in DISTS:
        source = tmp_path_factory.mktemp("src") / folder
        shutil.copytree(EXAMPLES / folder, source)
        sources.append(str(source))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), *sources], check=True)
    return target


@pytest.fixture
def on_path(installed_examples):
    sys.path.insert(0, str(installed_examples))
    importlib.invalidate_caches()
    previous = plugins.set_default_registry(None)
    yield installed_examples
    sys.path.remove(str(installed_examples))
    prefixes = tuple(prefix for _, prefix, _ in DISTS.values())
    for name in [m for m in sys.modules if m.startswith(prefixes)]:
        del sys.modules[name]
    plugins.set_default_registry(previous)


@pytest.fixture(autouse=True)
def _one_thread(torch_single_thread):
    yield


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _data() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(8, 16, generator=gen) for _ in range(2)]


def test_installed_examples_are_discovered_and_pass_their_contract_checks(on_path, tmp_path):
    records = {r.dist: r for r in plugins.plugins() if r.dist in {d for d, _, _ in DISTS.values()}}
    for dist, _, hooks in DISTS.values():
        record = records[dist]
        assert (record.version, record.error, record.registered) == ("0.1.0", None, hooks), dist
        for kind, names in hooks.items():
            impl = plugins.get(kind, names[0])
            if kind == "export_backend":
                testing.check_export_backend(impl, tmp_path)
            else:
                testing.CHECKS[kind](impl)


def test_palettize_export_and_load_back_by_name(on_path, tmp_path):
    pipeline = {"steps": [{"type": "palettize", "algorithm": "uniform",
                           "config": {"global_config": {"op_state_spec": {"weight": {"n_bits": 3}}}}},
                          {"type": "export", "backend": "npz", "path": "model.npz"}]}
    model, x = _mlp(), _data()[0]
    result = bitsmith.compress(model, pipeline, data=_data(), output_dir=tmp_path)
    for layer in (result.model[0], result.model[2], result.model[4]):
        assert torch.unique(layer.weight).numel() <= 8
    path = tmp_path / "model.npz"
    assert path in result.artifacts
    loaded = bitsmith.load(path, _mlp)
    assert torch.equal(loaded(x), result.model(x))
    assert len([r for *_, r in compressed.iter_records(loaded) if isinstance(r, compressed.PalettizedTensor)]) == 3


def test_mixed_precision_with_third_party_metric_search_and_palettizer(on_path, tmp_path):
    pipeline = {"steps": [{"type": "mixed_precision", "metric": "cosine", "search": "marginal",
                           "palettizer": "uniform", "target_bpw": 4, "candidates": ["2-bit", "4-bit", "6-bit"],
                           "cache_dir": None}]}
    result = bitsmith.compress(_mlp(), pipeline, data=_data(), output_dir=tmp_path)
    (recipe_path,) = [p for p in result.artifacts if p.suffix == ".yaml" and "recipe" in p.name]
    recipe = bitsmith.mixed_precision.Recipe.load(recipe_path)
    assert (recipe.metric, recipe.search) == ("cosine", "marginal")
    assert {e.palettizer for e in recipe.layers} == {"uniform"}
    assert recipe.bpw <= 4 and recipe.predicted_score is not None  # the metric is invertible
    config = recipe.to_config()
    assert config.algorithms() == {"uniform"}
    again = bitsmith.palettization.palettize(_mlp(), bitsmith.config.load(bitsmith.config.dump(config)))
    for a, b in zip(result.model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_quantize_with_third_party_quantizer_and_observer(on_path, tmp_path):
    weight_only = {"steps": [{"type": "quantize", "quantizer": "absmax"}]}
    model, x = _mlp(), _data()[0]
    result = bitsmith.compress(model, weight_only, data=_data(), output_dir=tmp_path / "absmax")
    records = [r for *_, r in compressed.iter_records(result.model)]
    assert len(records) == 3 and all(isinstance(r, compressed.QuantizedTensor) for r in records)
    assert float((result.model(x) - model(x)).detach().abs().max()) < 0.05
    pytest.importorskip("bitsmith_int8_quant")
    outputs = {}
    for observer in ("min_max", "percentile"):
        activation = {"dtype": "int8", "qscheme": "asymmetric", "observer": observer}
        steps = {"steps": [{"type": "quantize", "quantizer": "int8", "config": {"global_config": {
            "op_state_spec": None, "op_input_spec": {"*": activation}, "op_output_spec": None}}}]}
        result = bitsmith.compress(model, steps, data=_data(), output_dir=tmp_path / observer)
        outputs[observer] = result.model(x).detach()
    reference = model(x).detach()
    for observer, out in outputs.items():  # both calibrate usable ranges ...
        assert float((out - reference).norm() / reference.norm()) < 0.05, observer
    assert not torch.equal(outputs["min_max"], outputs["percentile"])  # ... and the percentile one clips


@pytest.mark.slow
def test_cli_lists_the_installed_examples(installed_examples):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(installed_examples), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "bitsmith.cli", "plugins", "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    payload = json.loads(out)
    by_dist = {p["dist"]: p for p in payload["plugins"]}
    for dist, _, hooks in DISTS.values():
        assert by_dist[dist]["error"] is None and by_dist[dist]["hooks"] == hooks, dist
