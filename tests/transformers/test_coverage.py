"""Coverage on transformers models: Conv1D like Linear, tied weights once, what stays uncompressed and why."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bitsmith import compressed
from bitsmith.coverage import CHANGED, COMPRESSED, UNCOMPRESSED, IncompatibleLayerWarning, LowCoverageWarning
from bitsmith.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
    PerGroupedChannelGranularity,
)
from bitsmith.resolve import output_channel_dim
from bitsmith.sizes import model_size

from .conftest import tiny_gpt2, transformers

Conv1D = transformers.pytorch_utils.Conv1D
G8 = PalettizationSpec(n_bits=3, granularity=PerGroupedChannelGranularity(axis=0, group_size=8))


def palettize(model, config):
    palettizer = KMeansPalettizer(model, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompatibleLayerWarning)
        return palettizer, palettizer.prepare(progress=False)


def test_conv1d_is_palettized_exactly_like_the_equivalent_linear():
    torch.manual_seed(0)
    conv = Conv1D(48, 32)  # weight (in=32, out=48)
    linear = nn.Linear(32, 48)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
    assert output_channel_dim(conv) == 1 and output_channel_dim(linear) == 0
    config = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": G8}))
    _, conv_p = palettize(nn.Sequential(conv), config)
    _, linear_p = palettize(nn.Sequential(linear), config)
    rc, rl = compressed.records(conv_p[0])["weight"], compressed.records(linear_p[0])["weight"]
    # one LUT per 8 *output* channels: dim 1 of the Conv1D weight
    assert rc.axis == 1 and rc.spec.granularity.axis == 1 and rc.num_luts == 6 and rc.indices.shape == (32, 48)
    assert torch.equal(rc.lut, rl.lut) and torch.equal(rc.indices, rl.indices.T)
    assert torch.equal(conv_p[0].weight, linear_p[0].weight.T)
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.allclose(conv_p(x), linear_p(x) - linear.bias + conv.bias, atol=1e-6)


def test_int8_quantizes_conv1d_per_output_channel():
    quantization = pytest.importorskip("bitsmith.quantization")
    model = tiny_gpt2()
    tokens = torch.randint(0, 100, (1, 8))
    prepared = quantization.Quantizer(model, quantization.QuantizerConfig()).prepare((tokens,))
    record = compressed.records(prepared.transformer.h[0].attn.c_attn)["weight"]
    weight = model.transformer.h[0].attn.c_attn.weight.detach()  # (64, 192): (in, out)
    assert record.scale.shape == (1, 192) and record.spec.granularity.axis == 1
    assert torch.allclose(record.scale[0], weight.abs().amax(0) / 127, rtol=1e-6)


def test_tied_embedding_and_head_are_compressed_once():
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    palettizer, prepared = palettize(model, KMeansPalettizerConfig.presets.w4())
    head = compressed.records(prepared.lm_head)["weight"]
    assert head is compressed.records(prepared.transformer.wte)["weight"]
    report = palettizer.report()
    assert [row.name for row in report.layers].count("transformer.wte.weight") == 1
    assert not any(row.name == "lm_head.weight" for row in report.layers)
    unique = {id(p): p for p in model.parameters()}
    palettizable = sum(p.numel() for p in unique.values() if p.dim() == 2)
    assert model_size(prepared).compressed.numel == report.after.numel == palettizable


def test_coverage_lists_every_uncompressed_parameter_and_warns_above_ten_percent():
    model = tiny_gpt2()
    config = KMeansPalettizerConfig.presets.w4().set_module_type(Conv1D, None)
    with pytest.warns(LowCoverageWarning, match=r"of the model's \d+ weights stay uncompressed \(largest: "
                                                r"transformer\.h\.\d\.mlp\.c_\w+\.weight 16384: excluded by config"):
        palettizer, _ = palettize(model, config)
    coverage = palettizer.report().coverage
    params = {name: p for name, p in model.named_parameters()}  # named_parameters() lists a tied one once
    assert {e.name for e in coverage.entries} == set(params)
    reasons = {e.name: e.reason for e in coverage.uncompressed}
    assert reasons["transformer.h.0.attn.c_attn.weight"] == (
        "excluded by config (module_type_configs['transformers.pytorch_utils.Conv1D'] is None)")
    assert reasons["transformer.h.0.ln_1.weight"] == "type not palettizable (LayerNorm is not a palettizable layer type)"
    assert reasons["transformer.h.0.attn.c_attn.bias"] == reasons["transformer.h.0.attn.c_attn.weight"]
    conv_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, Conv1D))
    uncompressed = sum(p.numel() for n, p in params.items() if n in reasons)
    assert coverage.uncompressed_fraction == uncompressed / sum(p.numel() for p in params.values())
    assert uncompressed > conv_weights and coverage.uncompressed_fraction > 0.1


@pytest.mark.parametrize("policy, status, reason", [
    ("fallback", CHANGED, "changed 4-bit g16 -> 4-bit g20: 1000 channels along axis 0 are not divisible by group_size 16"),
    ("skip", UNCOMPRESSED, "incompatible shape, skipped: 1000 channels along axis 0 are not divisible by group_size 16"),
])
def test_a_tied_weight_is_judged_by_the_owner_whose_config_asks_for_it(policy, status, reason):
    # the first owner (transformer.wte) is excluded; lm_head asks for a group size the vocabulary does not divide
    model = tiny_gpt2()
    g16 = PalettizationSpec(n_bits=4, granularity=PerGroupedChannelGranularity(axis=0, group_size=16))
    config = KMeansPalettizerConfig(module_name_configs={
        "transformer.wte": None,
        "lm_head": ModuleKMeansPalettizerConfig(op_state_spec={"weight": g16}, on_incompatible=policy)})
    with pytest.warns(LowCoverageWarning):  # the config names only these two layers
        palettizer, prepared = palettize(model, config)
    assert ("weight" in compressed.records(prepared.transformer.wte)) == (policy == "fallback")
    entries = {e.name: e for e in palettizer.report().coverage.entries}
    assert "lm_head.weight" not in entries  # a tied parameter appears once, under its first owner
    entry = entries["transformer.wte.weight"]
    assert (entry.status, entry.numel) == (status, 1000 * 64)
    assert entry.reason.startswith(reason)


def test_weights_that_came_compressed_count_as_compressed():
    first, prepared = palettize(tiny_gpt2(), KMeansPalettizerConfig.presets.w4())
    config = KMeansPalettizerConfig.presets.w4().set_module_type(Conv1D, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowCoverageWarning)
        again, _ = palettize(prepared, config)
    entries = {e.name: e for e in again.report().coverage.entries}
    weight, bias = entries["transformer.h.0.attn.c_attn.weight"], entries["transformer.h.0.attn.c_attn.bias"]
    assert (weight.status, weight.reason) == (
        COMPRESSED, "already compressed (module_type_configs['transformers.pytorch_utils.Conv1D'] is None)")
    assert (bias.status, bias.reason) == (
        UNCOMPRESSED, "excluded by config (module_type_configs['transformers.pytorch_utils.Conv1D'] is None)")
    assert again.report().coverage.uncompressed_fraction == first.report().coverage.uncompressed_fraction


def test_the_headline_gives_bpw_over_the_whole_model():
    model = tiny_gpt2()
    palettizer, prepared = palettize(model, KMeansPalettizerConfig.presets.w4())
    report = palettizer.report()
    size = model_size(prepared)
    assert report.bpw_model == size.total.total_bits / size.total.numel
    assert report.bpw_index == 4.0 < report.bpw < report.bpw_model < 5.0  # LUTs, then fp32 norms and biases
    text = str(report)
    assert f"whole model ({size.total.numel} weights, " in text and f"BPW {report.bpw_model:.3f}" in text
    assert "coverage: " in text and "type not palettizable (LayerNorm)" in text
