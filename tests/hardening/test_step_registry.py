"""Pipeline steps dispatch through one registry; a palettizer written from docs/plugins.md runs as it validates."""

from __future__ import annotations

import pytest
import torch

import bitsmith
from bitsmith.config import KMeansPalettizerConfig
from bitsmith.pipeline import config as pipeline_config
from bitsmith.pipeline.runner import RUNNERS


class MinimalPalettizer:
    """Exactly the documented contract: ``cls(model, config=None)`` with prepare/finalize/report, no config_class."""

    seen: list = []

    def __init__(self, model, config=None):
        self.model, self.config = model, config
        MinimalPalettizer.seen.append(config)

    def prepare(self, example_inputs=None):
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(p.sign())
        return self.model

    def finalize(self, model=None, backend="torch"):
        return self.model

    def report(self):
        return {}


class Plugin:
    @bitsmith.hookimpl
    def palettizer(self, register):
        register("minimal", MinimalPalettizer)


def test_documented_palettizer_without_config_class_runs(tmp_path):
    registry = bitsmith.plugins.Registry(autoload=False, plugins=[Plugin()])
    MinimalPalettizer.seen.clear()
    pipeline = {"steps": [{"type": "palettize", "algorithm": "minimal",
                           "config": {"global_config": {"op_state_spec": {"weight": {"n_bits": 2}}}}}]}
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    result = bitsmith.compress(model, pipeline, registry=registry, output_dir=tmp_path)
    (config,) = MinimalPalettizer.seen
    assert isinstance(config, KMeansPalettizerConfig)
    assert config.global_config.op_state_spec["weight"].n_bits == 2
    assert torch.equal(result.model.weight, model.weight.sign())


def test_every_step_type_has_a_runner_and_a_known_stage():
    assert list(pipeline_config.STEP_TYPES) == ["palettize", "quantize", "mixed_precision", "export"]
    for tag, kind in pipeline_config.STEP_TYPES.items():
        assert kind.cls in RUNNERS, tag
        assert kind.stage in pipeline_config.STAGES
    with pytest.raises(ValueError, match="step type 'export' is already registered"):
        pipeline_config.register_step("export", pipeline_config.STEP_TYPES["export"])
    with pytest.raises(ValueError, match="stage 'later' is not one of weights, activations, output"):
        pipeline_config.register_step("new", pipeline_config.StepKind(object, lambda *a: [], "later"))
