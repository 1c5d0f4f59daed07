"""The README's "Use it" snippet (``presets.w4()``) on MobileNetV2, GPT-2 and Llama, and ``on_incompatible``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import bitsmith
from bitsmith import compressed
from bitsmith.config import from_yaml, to_yaml
from bitsmith.coverage import IncompatibleLayerWarning
from bitsmith.errors import CompressionError
from bitsmith.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
    PerGroupedChannelGranularity,
)
from bitsmith.resolve import is_palettizable

from .conftest import MODELS, VOCAB


def run_readme_snippet(model: nn.Module, example_inputs: tuple):
    """The README's "Use it" block, verbatim apart from the model and inputs."""
    config = KMeansPalettizerConfig.presets.w4()          # 4-bit, one LUT per 16 output channels
    palettizer = KMeansPalettizer(model, config)
    prepared = palettizer.prepare(example_inputs=example_inputs)
    print(palettizer.report())                            # per-layer sizes, BPW (index-only and all-in), SQNR
    exported = palettizer.finalize(backend=bitsmith.ExportBackend.CoreAI)
    return palettizer, prepared, exported


def weight_records(model: nn.Module) -> dict[str, compressed.Record]:
    return {f"{m}.{n}": r for m, _, n, r in compressed.iter_records(model) if n == "weight"}


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_readme_snippet_runs_on_transformers(arch, tokens):
    model = MODELS[arch]()
    with pytest.warns(IncompatibleLayerWarning, match=f"{VOCAB} channels along axis 0 are not divisible by "
                                                      "group_size 16"):
        palettizer, prepared, exported = run_readme_snippet(model, (tokens,))
    layers = [n for n, m in model.named_modules() if is_palettizable(m)]
    records = weight_records(prepared)
    # every projection and embedding is compressed (GPT-2's tied lm_head shares wte's record)
    assert {f"{n}.weight" for n in layers} == set(records)
    groups = {name: r.spec.granularity.group_size for name, r in records.items()}
    vocab = {n for n, r in records.items() if r.shape[0] == VOCAB}
    assert all(groups[n] == 20 for n in vocab)  # 1000 = 50 groups of 20: the divisor nearest to 16
    assert all(size == 16 for n, size in groups.items() if n not in vocab)
    report = palettizer.report()
    assert report.bpw_index == 4.0
    changed = {e.name for e in report.coverage.changed}
    assert changed == {n for n in vocab if not (arch == "gpt2" and n == "lm_head.weight")}
    assert all("4-bit g16 -> 4-bit g20" in e.reason for e in report.coverage.changed)
    with torch.no_grad():
        out, ref = exported(tokens).logits, model(tokens).logits
    assert torch.equal(out, prepared(tokens).logits)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.9


@pytest.mark.slow
def test_readme_snippet_runs_on_mobilenet_v2():
    zoo = pytest.importorskip("bitsmith_zoo")
    model = zoo.load_mobilenet_v2()
    with pytest.warns(IncompatibleLayerWarning):
        palettizer, prepared, exported = run_readme_snippet(model, (torch.randn(1, 3, 224, 224),))
    records = weight_records(prepared)
    assert len(records) == 53  # every conv and the classifier
    changed = {e.name: e.reason for e in palettizer.report().coverage.changed}
    # 24-channel convs: 12 is the divisor of 24 nearest to 16; the 1000-class head: 20
    assert changed["features.2.conv.2.weight"].startswith("changed 4-bit g16 -> 4-bit g12")
    assert changed["classifier.1.weight"].startswith("changed 4-bit g16 -> 4-bit g20")
    assert all(records[n].spec.granularity.group_size == 16 for n in records if n not in changed)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(x), prepared(x))


def two_layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12))


def grouped(policy=None) -> ModuleKMeansPalettizerConfig:
    spec = PalettizationSpec(n_bits=2, granularity=PerGroupedChannelGranularity(axis=0, group_size=8))
    return ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec}, on_incompatible=policy)


def prepare(config):
    palettizer = KMeansPalettizer(two_layers(), config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompatibleLayerWarning)
        return palettizer, palettizer.prepare(progress=False)


def test_fallback_takes_the_nearest_dividing_group_size():
    palettizer, prepared = prepare(KMeansPalettizerConfig(global_config=grouped("fallback")))
    record = compressed.records(prepared[2])["weight"]
    assert record.spec.granularity == PerGroupedChannelGranularity(axis=0, group_size=6)  # 12 = 2 x 6; 4 is as near
    assert record.num_luts == 2 and compressed.records(prepared[0])["weight"].num_luts == 2
    (entry,) = palettizer.report().coverage.changed
    assert entry.name == "2.weight" and entry.reason.startswith("changed 2-bit g8 -> 2-bit g6: 12 channels")


def test_skip_leaves_the_layer_uncompressed_and_lists_it():
    palettizer, prepared = prepare(KMeansPalettizerConfig(global_config=grouped("skip")))
    assert "weight" not in compressed.records(prepared[2])
    assert torch.equal(prepared[2].weight, two_layers()[2].weight)
    coverage = palettizer.report().coverage
    entry = next(e for e in coverage.uncompressed if e.name == "2.weight")
    assert entry.reason.startswith("incompatible shape, skipped: 12 channels along axis 0")
    assert "2.weight" in str(coverage) and "incompatible shape" in coverage.summary()


def test_error_names_the_layer_and_is_the_default_for_named_layers():
    for config in (KMeansPalettizerConfig(global_config=grouped("error")),
                   KMeansPalettizerConfig(module_name_configs={"2": grouped()})):
        with pytest.raises(CompressionError, match=r"^2\.weight: 12 channels along axis 0 are not divisible by "
                                                   r"group_size 8"):
            KMeansPalettizer(two_layers(), config).prepare(progress=False)
    # a module type rule is broad, like the global config: it falls back
    _, prepared = prepare(KMeansPalettizerConfig(module_type_configs={nn.Linear: grouped()}))
    assert compressed.records(prepared[2])["weight"].spec.granularity.group_size == 6


def test_fallback_per_tensor_when_the_axis_is_missing_and_skip_when_nothing_fits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Conv1d(6, 5, 3))
    along_inputs = PalettizationSpec(n_bits=2, granularity=PerGroupedChannelGranularity(axis=1, group_size=2))
    vector = PalettizationSpec(n_bits=2, cluster_dim=2)
    config = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec={"bias": along_inputs}),
                                    module_name_configs={"1": ModuleKMeansPalettizerConfig(
                                        op_state_spec={"weight": vector}, on_incompatible="fallback")})
    palettizer = KMeansPalettizer(model, config)
    with pytest.warns(IncompatibleLayerWarning):
        prepared = palettizer.prepare(progress=False)
    assert compressed.records(prepared[0])["bias"].spec.granularity == bitsmith.config.PerTensorGranularity()
    assert "weight" not in compressed.records(prepared[1])  # cluster_dim 2 cannot split 5 channels
    reasons = {e.name: e.reason for e in palettizer.report().coverage.entries}
    assert reasons["0.bias"].startswith("changed 2-bit g2a1 -> 2-bit: a 1-D tensor (6,) has no axis 1")
    assert reasons["1.weight"].startswith("incompatible shape, skipped: cluster_dim 2 does not divide the 5")


def test_on_incompatible_in_yaml_and_its_validation():
    config = KMeansPalettizerConfig(global_config=grouped("skip"))
    text = to_yaml(config)
    assert "on_incompatible: skip" in text and from_yaml(text) == config
    assert "on_incompatible" not in to_yaml(KMeansPalettizerConfig())  # unset: not written
    assert KMeansPalettizerConfig.presets.w4().global_config.on_incompatible == "fallback"
    with pytest.raises(bitsmith.ConfigError, match=r"global_config\.on_incompatible: 'drop' is not one of error, "
                                                   r"skip, fallback"):
        from_yaml(text.replace("on_incompatible: skip", "on_incompatible: drop"))
