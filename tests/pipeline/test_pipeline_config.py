"""Pipeline YAML: structure, registry names, step configs and order are checked before any model work."""

from __future__ import annotations

import textwrap

import pytest
import torch

import bitsmith
from bitsmith.errors import ConfigError
from bitsmith.pipeline import ExportStep, PalettizeStep, PipelineConfig, dump_pipeline, load_pipeline
from bitsmith.pipeline.config import step_type


class Plugins:
    """A private registry's plugins: one clusterer, palettizer, quantizer, metric, search, two backends."""

    @bitsmith.hookimpl
    def cluster(self, register):
        register("kmeans", lambda x, k, **kw: (x[:1], torch.zeros(x.shape[0], dtype=torch.long)))

    @bitsmith.hookimpl
    def palettizer(self, register):
        from bitsmith.palettization import Palettizer

        register("kmeans", Palettizer)

    @bitsmith.hookimpl
    def quantizer(self, register):
        class Quantizer:
            config_class = bitsmith.config.QuantizerConfig

            def __init__(self, model, config=None, *, registry=None):
                self.model = model

        register("int8", Quantizer)

    @bitsmith.hookimpl
    def sensitivity_metric(self, register):
        class Metric:
            higher_is_better, unit = True, "dB"

            def score(self, reference, output):
                return 0.0

            def to_distortion(self, score):
                return 0.0

        register("psnr", Metric())

    @bitsmith.hookimpl
    def recipe_search(self, register):
        register("greedy", lambda problem: [0] * len(problem.layers))

    @bitsmith.hookimpl
    def export_backend(self, register):
        class File:
            description, suffix = "file", ".bin"

            def finalize(self, model):
                return model

            def save(self, model, path, *, example_inputs=None):
                return path

        class NoFile:
            description = "in memory"

            def finalize(self, model):
                return model

        register("onnx", File())
        register("safetensors", File())
        register("memory", NoFile())


@pytest.fixture
def registry():
    return bitsmith.plugins.Registry(autoload=False, plugins=[Plugins()])


def load(text, registry):
    return load_pipeline(textwrap.dedent(text), registry=registry)


def errors(text, registry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, registry)
    return info.value.lines


GOOD = """
pipeline:
  model: torch.nn:Identity
  steps:
    - type: palettize
      algorithm: kmeans
      config: {global_config: {op_state_spec: {weight: {n_bits: 4}}}}
    - type: export
      backend: onnx
"""


def test_good_pipeline_and_round_trip(registry):
    config = load(GOOD, registry)
    assert [step_type(s) for s in config.steps] == ["palettize", "export"]
    assert config.steps[0] == PalettizeStep(algorithm="kmeans",
                                            config={"global_config": {"op_state_spec": {"weight": {"n_bits": 4}}}})
    assert config.steps[1] == ExportStep(backend="onnx")
    again = load_pipeline(dump_pipeline(config), registry=registry)
    assert again == config


def test_unknown_backend_is_path_precise_with_alternatives(registry):
    lines = errors(GOOD.replace("backend: onnx", "backend: onxx"), registry)
    assert lines == ["steps.1.backend: 'onxx' is not a registered export backend; available: memory, onnx, "
                     "safetensors (did you mean 'onnx'?)"]


def test_structure_errors_name_every_path(registry):
    text = """
    model: torch.nn:Identity
    steps:
      - type: palettize
        algoritm: kmeans
      - type: exprt
        backend: onnx
      - type: mixed_precision
        metric: psnr
      - type: export
    """
    lines = errors(text, registry)
    assert "steps.0.algoritm: unknown key (did you mean 'algorithm'?); allowed keys: algorithm, config, " \
           "num_workers, seed" in lines
    assert "steps.1.type: 'exprt' is not one of palettize, quantize, mixed_precision, export " \
           "(did you mean 'export'?)" in lines
    assert any(line.startswith("steps.2.target_bpw: give exactly one of target_bpw") for line in lines)
    assert "steps.3.backend: required key is missing" in lines


def test_algorithm_configs_are_checked_with_their_class(registry):
    lines = errors(GOOD.replace("n_bits: 4", "n_bits: 5"), registry)
    assert lines == ["steps.0.config.global_config.op_state_spec.weight.n_bits: 5 is not one of 1, 2, 3, 4, 6, 8"]
    text = """
    model: torch.nn:Identity
    data: torch:randn
    steps:
      - type: quantize
        quantizer: int8
        config: {global_config: {op_state_spec: {weight: {dtype: int7}}}}
    """
    lines = errors(text, registry)
    assert len(lines) == 1 and lines[0].startswith("steps.0.config.global_config.op_state_spec.weight.dtype: 'int7'")


def test_registry_names_of_every_step(registry):
    text = """
    model: torch.nn:Identity
    data: torch:randn
    steps:
      - type: palettize
        algorithm: kmenas
      - type: mixed_precision
        metric: psrn
        search: gredy
        palettizer: kmeans
        target_bpw: 4
        candidates: ["4-bit", "4-bit @skm"]
      - type: quantize
        quantizer: int4
      - type: export
        backend: memory
        path: out.bin
      - type: export
        backend: onnx
        options: {dynamic_bach: true}
    """
    lines = errors(text, registry)
    assert "steps.0.algorithm: 'kmenas' is not a registered palettizer or clusterer; available: kmeans " \
           "(did you mean 'kmeans'?)" in lines
    assert "steps.1.metric: 'psrn' is not a registered sensitivity metric; available: psnr (did you mean 'psnr'?)" \
        in lines
    assert "steps.1.search: 'gredy' is not a registered recipe search; available: greedy (did you mean 'greedy'?)" \
        in lines
    assert any(line.startswith("steps.1.candidates ('4-bit @skm'): 'skm' is not a registered palettizer") for line in lines)
    assert "steps.1.type: mixed_precision after steps.0 (palettize): weights are palettized once per pipeline " \
           "(put the layers in one config, or use mixed_precision alone)" in lines
    assert "steps.2.quantizer: 'int4' is not a registered quantizer; available: int8 (did you mean 'int8'?)" in lines
    assert "steps.3.path: export backend 'memory' does not write files; remove 'path'" in lines
    assert "steps.4.options.dynamic_bach: not an option of export backend 'onnx'; options: none" in lines


def test_step_order_and_data_requirements(registry):
    text = """
    model: torch.nn:Identity
    steps:
      - type: quantize
      - type: palettize
    """
    lines = errors(text, registry)
    assert "steps.1.type: palettize after quantize: palettize first, then quantize (joint compression quantizes " \
           "activations of the palettized model)" in lines
    assert "data: required by steps.0 (quantize calibrates on it); give 'package.module:function' returning a " \
           "batch or a list of batches" in lines


def test_references_are_resolved_before_running(registry):
    lines = errors(GOOD.replace("torch.nn:Identity", "no_such_pkg.models:build"), registry)
    assert len(lines) == 1 and lines[0].startswith("model: cannot import module 'no_such_pkg.models'")
    lines = errors(GOOD.replace("torch.nn:Identity", "torch.nn:Idnetity"), registry)
    assert lines[0].startswith("model: module 'torch.nn' has no attribute 'Idnetity'")
    lines = errors(GOOD.replace("torch.nn:Identity", "just_a_name"), registry)
    assert lines == ["model: expected 'package.module:function', got 'just_a_name'"]


def test_bad_config_fails_before_the_model_is_built(registry, tmp_path):
    built = []

    def factory():
        built.append(1)
        return torch.nn.Linear(2, 2)

    config = load_pipeline(textwrap.dedent(GOOD), registry=registry)
    bad = {"steps": [{"type": "export", "backend": "onxx"}]}
    with pytest.raises(ConfigError, match=r"steps\.0\.backend: 'onxx'"):
        bitsmith.compress(factory, bad, registry=registry, output_dir=tmp_path)
    assert built == [] and isinstance(config, PipelineConfig)


def test_file_errors(tmp_path, registry):
    with pytest.raises(ConfigError, match="no such pipeline file"):
        load_pipeline(tmp_path / "missing.yaml", registry=registry)
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_pipeline(bad, registry=registry)
    with pytest.raises(ConfigError, match="steps: expected a non-empty list of steps"):
        load_pipeline({"steps": []}, registry=registry)
