"""KMeansPalettizer on models: module coverage, every spec field, tied weights, errors, parallelism, report."""

from __future__ import annotations

import concurrent.futures as cf
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from bitsmith import compressed
from bitsmith.config import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
    PerGroupedChannelGranularity,
    QuantizationScheme,
    QuantizationSpec,
)
from bitsmith.coverage import COMPRESSED, UNCOMPRESSED, LowCoverageWarning
from bitsmith.errors import CompressionError, ConfigError
from bitsmith.sizes import model_size
from bitsmith_kmeans.palettizer import KMeansPalettizer


def config(spec=None, *, names=None, **tensors):
    spec = spec or PalettizationSpec()
    op_state = {"weight": spec, "in_proj_weight": spec, **tensors}
    if names is not None:
        return KMeansPalettizerConfig(module_name_configs={n: ModuleKMeansPalettizerConfig(op_state_spec=op_state)
                                                           for n in names})
    return KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec=op_state))


def prepare(model, cfg, registry, **kwargs):
    palettizer = KMeansPalettizer(model, cfg, registry=registry)
    kwargs.setdefault("progress", False)
    return palettizer, palettizer.prepare(**kwargs)


def seeded(module, seed=0):
    torch.manual_seed(seed)
    return module


def uniques(t):
    return torch.unique(t.detach()).numel()


# --------------------------------------------------------------------------- module coverage

LAYERS = {
    "Linear": (lambda: nn.Linear(24, 16), lambda: torch.randn(2, 24)),
    "Conv1d": (lambda: nn.Conv1d(8, 16, 3), lambda: torch.randn(2, 8, 10)),
    "Conv2d": (lambda: nn.Conv2d(8, 16, 3), lambda: torch.randn(2, 8, 6, 6)),
    "Conv3d": (lambda: nn.Conv3d(8, 16, 2), lambda: torch.randn(1, 8, 4, 4, 4)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(16, 8, 3), lambda: torch.randn(2, 16, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(16, 8, 3), lambda: torch.randn(2, 16, 4, 4)),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(16, 8, 2), lambda: torch.randn(1, 16, 3, 3, 3)),
    "Embedding": (lambda: nn.Embedding(40, 16), lambda: torch.randint(0, 40, (2, 7))),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_every_layer_type_is_palettized(kind, registry):
    make, inputs = LAYERS[kind]
    model = nn.Sequential(seeded(make()))
    original = model[0].weight.detach().clone()
    _, prepared = prepare(model, KMeansPalettizerConfig(), registry)
    layer = prepared[0]
    record = compressed.records(layer)["weight"]
    assert isinstance(record, compressed.PalettizedTensor)
    assert uniques(layer.weight) <= 16 < uniques(original)
    assert torch.equal(layer.weight, record.dequantize())
    assert torch.equal(model[0].weight, original)  # the input model is untouched
    assert prepared(inputs()).shape == model(inputs()).shape
    if getattr(layer, "bias", None) is not None:
        assert "bias" not in compressed.records(layer)


def test_multihead_attention_in_proj_and_out_proj(registry):
    mha = seeded(nn.MultiheadAttention(16, 2, batch_first=True))
    _, prepared = prepare(nn.Sequential(mha), KMeansPalettizerConfig(), registry)
    assert set(compressed.records(prepared[0])) == {"in_proj_weight"}
    assert set(compressed.records(prepared[0].out_proj)) == {"weight"}
    assert uniques(prepared[0].in_proj_weight) <= 16 and uniques(prepared[0].out_proj.weight) <= 16
    x = torch.randn(2, 5, 16)
    out, _ = prepared[0](x, x, x)
    assert out.shape == (2, 5, 16)


class Scaled(nn.Module):
    """A custom module with a parameter that no default config names."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(32, 8))

    def forward(self, x):
        return x @ self.kernel.t()


def test_a_custom_parameter_named_by_a_config(registry):
    model = nn.Sequential(seeded(Scaled()))
    with pytest.warns(LowCoverageWarning, match=r"100\.0% of the model's 256 weights stay uncompressed \(largest: "
                                                r"0\.kernel 256: type not palettizable \(Scaled is not"):
        palettizer, untouched = prepare(model, KMeansPalettizerConfig(), registry)
    assert not compressed.is_compressed(untouched)  # not a palettizable type: global config skips it
    (entry,) = palettizer.report().coverage.entries
    assert (entry.name, entry.status) == ("0.kernel", UNCOMPRESSED)
    assert entry.reason == "type not palettizable (Scaled is not a palettizable layer type)"

    cfg = KMeansPalettizerConfig(module_name_configs={"0": ModuleKMeansPalettizerConfig(
        op_state_spec={"kernel": PalettizationSpec(n_bits=2)})})
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowCoverageWarning)  # all of the model is compressed: no warning
        palettizer, prepared = prepare(model, cfg, registry)
    assert set(compressed.records(prepared[0])) == {"kernel"}
    assert uniques(prepared[0].kernel) <= 4
    coverage = palettizer.report().coverage
    assert [(e.name, e.numel, e.status, e.reason) for e in coverage.entries] == [
        ("0.kernel", 256, COMPRESSED, "module_name_configs['0'].op_state_spec['kernel']")]
    assert coverage.uncompressed_fraction == 0.0
    assert coverage.summary().startswith("coverage: 100.0% of 256 weights compressed; 0 parameters uncompressed")


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.head = nn.Linear(16, 32, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens):
        return self.head(self.emb(tokens))


def test_tied_weights_are_palettized_once(registry):
    model = seeded(Tied())
    palettizer, prepared = prepare(model, KMeansPalettizerConfig(), registry)
    rec_emb = compressed.records(prepared.emb)["weight"]
    assert compressed.records(prepared.head)["weight"] is rec_emb
    assert prepared.head.weight is prepared.emb.weight
    assert [row.name for row in palettizer.report().layers] == ["emb.weight"]
    size = model_size(prepared)
    assert size.compressed.numel == 32 * 16
    assert size.compressed.total_bits == 32 * 16 * 4 + 16 * 32


def test_layers_with_few_distinct_values_are_kept_exactly(registry):
    conv = nn.Conv2d(4, 8, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0])[torch.randint(0, 4, conv.weight.shape)])
    palettizer, prepared = prepare(nn.Sequential(conv), config(PalettizationSpec(n_bits=2)), registry)
    assert torch.equal(prepared[0].weight, conv.weight)
    row = palettizer.report().layers[0]
    assert row.lut_values == 4 and math.isinf(row.sqnr_db)


# --------------------------------------------------------------------------- spec fields


@pytest.mark.parametrize("n_bits", [1, 2, 3, 4, 6, 8])
def test_n_bits(n_bits, registry):
    model = nn.Sequential(seeded(nn.Linear(64, 48)))
    _, prepared = prepare(model, config(PalettizationSpec(n_bits=n_bits)), registry)
    record = compressed.records(prepared[0])["weight"]
    assert record.lut.shape == (1, 2**n_bits, 1)
    assert int(record.indices.max()) < 2**n_bits
    assert uniques(prepared[0].weight) == 2**n_bits


@pytest.mark.parametrize("axis", [0, 1])
def test_per_grouped_channel(axis, registry):
    model = nn.Sequential(seeded(nn.Linear(32, 48)))
    spec = PalettizationSpec(n_bits=2, granularity=PerGroupedChannelGranularity(axis=axis, group_size=8))
    _, prepared = prepare(model, config(spec), registry)
    record = compressed.records(prepared[0])["weight"]
    channels = 48 if axis == 0 else 32
    assert record.num_luts == channels // 8 and record.axis == axis
    w = prepared[0].weight.detach().movedim(axis, 0)
    for g in range(channels // 8):
        group = w[g * 8:(g + 1) * 8]
        assert uniques(group) <= 4
        assert set(group.flatten().tolist()) <= set(record.lut[g, :, 0].tolist())


def test_group_size_that_does_not_divide_fails_before_any_work(registry):
    model = nn.Sequential(seeded(nn.Linear(8, 16)), seeded(nn.Linear(16, 12), 1))
    before = [p.detach().clone() for p in model.parameters()]
    spec = PalettizationSpec(granularity=PerGroupedChannelGranularity(axis=0, group_size=8))
    cfg = config(spec)
    cfg.global_config.on_incompatible = "error"  # the default for a global config is "fallback"
    with pytest.raises(CompressionError, match=r"^1\.weight: 12 channels along axis 0 are not divisible by "
                                               r"group_size 8; group sizes that divide it: 1, 2, 3, 4, 6, 12"):
        prepare(model, cfg, registry, inplace=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not compressed.is_compressed(model)


def test_vector_palettization(registry):
    model = nn.Sequential(seeded(nn.Conv2d(8, 16, 3)))
    _, prepared = prepare(model, config(PalettizationSpec(n_bits=3, cluster_dim=2)), registry, seed=0)
    record = compressed.records(prepared[0])["weight"]
    assert record.lut.shape == (1, 8, 2) and record.indices.shape == (8, 8, 3, 3)
    w = prepared[0].weight.detach()
    pairs = {tuple(p) for p in w.reshape(8, 2, -1).permute(0, 2, 1).reshape(-1, 2).tolist()}
    assert pairs <= {tuple(r) for r in record.lut[0].tolist()} and len(pairs) <= 8


def test_cluster_dim_that_does_not_divide_the_axis_names_the_layer(registry):
    model = nn.Sequential(seeded(nn.Linear(8, 15)))
    cfg = config(PalettizationSpec(cluster_dim=2))
    cfg.global_config.on_incompatible = "error"  # "fallback" (the default here) would skip the layer
    with pytest.raises(CompressionError, match=r"^0\.weight: cluster_dim 2 does not divide the 15 channels"):
        prepare(model, cfg, registry)


LUT_QSPECS = [("int8", "symmetric"), ("int8", "asymmetric"), ("uint8", "symmetric"), ("uint8", "asymmetric"),
              ("float8_e4m3fn", "symmetric"), ("float8_e5m2", "symmetric")]


@pytest.mark.parametrize("dtype, scheme", LUT_QSPECS)
def test_lut_qspec_rounds_lut_values_to_the_dtype(dtype, scheme, registry):
    qspec = QuantizationSpec(dtype=dtype, qscheme=scheme)
    model = nn.Sequential(seeded(nn.Linear(32, 32)))
    _, prepared = prepare(model, config(PalettizationSpec(n_bits=4, lut_qspec=qspec)), registry)
    record = compressed.records(prepared[0])["weight"]
    quant = record.lut_quant
    assert quant.int_lut.dtype == getattr(torch, dtype)
    zp = 0.0 if quant.zero_point is None else quant.zero_point.float()[:, None, None]
    assert torch.equal(record.lut, (quant.int_lut.float() - zp) * quant.scale[:, None, None])
    assert set(prepared[0].weight.flatten().tolist()) <= set(record.lut.flatten().tolist())
    assert (quant.zero_point is None) == (dtype != "uint8" and scheme == "symmetric")


def test_float8_lut_with_asymmetric_scheme_is_a_config_error():
    with pytest.raises((ConfigError, ValueError), match="float8 values have no zero point"):
        PalettizationSpec(lut_qspec=QuantizationSpec(dtype="float8_e4m3fn", qscheme="asymmetric"))


def test_per_channel_scale(registry):
    model = nn.Sequential(seeded(nn.Linear(16, 8)))
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 2, 8)[:, None])  # channels of very different size
    _, plain = prepare(model, config(PalettizationSpec(n_bits=3)), registry)
    _, scaled = prepare(model, config(PalettizationSpec(n_bits=3, enable_per_channel_scale=True)), registry)
    record = compressed.records(scaled[0])["weight"]
    assert torch.equal(record.per_channel_scale, model[0].weight.detach().abs().amax(1))
    assert record.lut.shape == (1, 8, 1) and float(record.lut.abs().max()) <= 1.0  # one LUT of normalized values
    assert torch.equal(scaled[0].weight, record.lut[0, record.indices.long(), 0] * record.per_channel_scale[:, None])
    err = lambda m: ((m[0].weight - model[0].weight) / model[0].weight.abs().amax(1, keepdim=True)).pow(2).sum()
    assert err(scaled) < err(plain)  # small channels keep their shape only when normalized


# --------------------------------------------------------------------------- errors, inplace


def test_non_finite_weights_fail_naming_the_layer(registry):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(CompressionError, match=r"^1\.weight: has NaN or infinite values"):
        prepare(model, KMeansPalettizerConfig(), registry)


def test_integer_tensor_named_by_a_config_fails_naming_it(registry):
    class WithCodes(nn.Module):
        def __init__(self):
            super().__init__()
            self.codes = nn.Parameter(torch.arange(8), requires_grad=False)

    model = nn.Sequential(WithCodes())
    cfg = KMeansPalettizerConfig(module_name_configs={"0": ModuleKMeansPalettizerConfig(
        op_state_spec={"codes": PalettizationSpec()})})
    with pytest.raises(CompressionError, match=r"^0\.codes: cannot palettize a torch.int64 tensor"):
        prepare(model, cfg, registry)


def test_inplace_modifies_the_given_model(registry):
    model = nn.Sequential(seeded(nn.Linear(16, 16)))
    _, prepared = prepare(model, KMeansPalettizerConfig(), registry, inplace=True)
    assert prepared is model and uniques(model[0].weight) <= 16


# --------------------------------------------------------------------------- parallel, progress, seeds


def mixed_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 16, 3), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16, 8), nn.Linear(8, 4))


def mixed_config():
    cfg = config(PalettizationSpec(n_bits=3, granularity=PerGroupedChannelGranularity(axis=0, group_size=4)))
    cfg.set_module_name("3", ModuleKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(cluster_dim=2)}))
    return cfg


def weights_of(model):
    return [t.detach().clone() for t in model.parameters()]


def test_process_workers_and_executors_match_the_sequential_path(registry):
    _, sequential = prepare(mixed_model(), mixed_config(), registry, seed=11)
    _, processes = prepare(mixed_model(), mixed_config(), registry, seed=11, num_workers=2)
    with cf.ThreadPoolExecutor(3) as pool:
        _, threads = prepare(mixed_model(), mixed_config(), registry, seed=11, executor=pool)
    ref = weights_of(sequential)
    for other in (processes, threads):
        assert all(torch.equal(a, b) for a, b in zip(ref, weights_of(other)))


def test_vector_palettization_is_reproducible_with_seed_or_global_seeding(registry):
    cfg = config(PalettizationSpec(n_bits=4, cluster_dim=2))
    runs = []
    for _ in range(2):
        np.random.seed(42)
        torch.manual_seed(42)
        runs.append(weights_of(prepare(mixed_model(), cfg, registry)[1]))
    runs.append(weights_of(prepare(mixed_model(), cfg, registry)[1]))  # unseeded: generators moved on
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
    a = weights_of(prepare(mixed_model(), cfg, registry, seed=3)[1])
    b = weights_of(prepare(mixed_model(), cfg, registry, seed=3)[1])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_scalar_palettization_needs_no_seed(registry):
    a = weights_of(prepare(mixed_model(), KMeansPalettizerConfig(), registry)[1])
    b = weights_of(prepare(mixed_model(), KMeansPalettizerConfig(), registry)[1])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_progress_bar_can_be_switched(registry, capsys):
    prepare(mixed_model(), KMeansPalettizerConfig(), registry, progress=True)
    assert "palettize (kmeans)" in capsys.readouterr().err
    prepare(mixed_model(), KMeansPalettizerConfig(), registry, progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- report


@pytest.mark.parametrize("n_bits, kib, total_bytes", [(2, 2.31, 2368), (4, 4.66, 4768), (6, 7.14, 7312)])
def test_report_of_a_9408_weight_conv(n_bits, kib, total_bytes, registry):
    # ResNet50's conv1 (64x3x7x7 = 9408 fp32 weights): indices 9408*n/8 bytes + 2**n fp32 LUT entries
    model = nn.Sequential(seeded(nn.Conv2d(3, 64, 7, bias=False)))
    palettizer, prepared = prepare(model, config(PalettizationSpec(n_bits=n_bits)), registry)
    report = palettizer.report()
    (row,) = report.layers
    assert row.name == "0.weight" and row.shape == (64, 3, 7, 7) and row.spec == f"{n_bits}-bit"
    assert row.kib_before == 9408 * 4 / 1024 == 36.75
    assert row.kib_after * 1024 == total_bytes and round(row.kib_after, 2) == kib
    assert row.bpw == total_bytes * 8 / 9408
    assert row.lut_values == 2**n_bits
    original, approx = model[0].weight.detach().double(), prepared[0].weight.detach().double()
    expected_sqnr = 10 * math.log10(original.pow(2).sum() / (original - approx).pow(2).sum())
    assert row.sqnr_db == pytest.approx(expected_sqnr, abs=1e-3) and 5 * n_bits < row.sqnr_db < 60
    totals = report.totals()
    assert totals["bpw_index"] == n_bits and totals["compressed_weights"] == 9408
    assert totals["model_mib_before"] == 36.75 / 1024 and totals["model_mib_after"] == total_bytes / 2**20
    assert report.to_dicts()[0]["kib_after"] == row.kib_after


def test_report_totals_and_table_for_a_mixed_model(registry):
    model = nn.Sequential(seeded(nn.Linear(64, 32)), seeded(nn.Linear(32, 16), 1))
    spec_g = PalettizationSpec(n_bits=4, granularity=PerGroupedChannelGranularity(axis=0, group_size=16))
    spec_q = PalettizationSpec(n_bits=2, lut_qspec=QuantizationSpec(dtype="int8"), enable_per_channel_scale=True)
    cfg = KMeansPalettizerConfig(module_name_configs={
        "0": ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec_g}),
        "1": ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec_q})})
    palettizer, _ = prepare(model, cfg, registry)
    report = palettizer.report()
    first, second = report.layers
    # 2048 weights * 4 bits + 2 LUTs * 16 fp32 entries
    assert first.kib_after * 8 * 1024 == 2048 * 4 + 2 * 16 * 32
    # 512 weights * 2 bits + 4 int8 entries + one fp32 LUT scale + 16 fp32 channel scales
    assert second.kib_after * 8 * 1024 == 512 * 2 + 4 * 8 + 32 + 16 * 32
    assert first.spec == "4-bit g16" and second.spec == "2-bit lut:int8 +scale"
    totals = report.totals()
    assert totals["bpw_index"] == (2048 * 4 + 512 * 2) / 2560
    assert totals["bpw_all_in"] == (9216 + 1600) / 2560
    biases = (32 + 16) * 32
    assert totals["model_mib_before"] == ((2560 * 32) + biases) / 8 / 2**20
    assert totals["model_mib_after"] == (9216 + 1600 + biases) / 8 / 2**20
    text = str(report)
    assert text.splitlines()[0].split() == ["layer", "shape", "spec", "LUT", "values", "KiB", "before", "KiB", "after",
                                            "BPW", "SQNR", "dB"]
    assert "0.weight" in text and "32x64" in text and "BPW 3.600 index-only, 4.225 all-in" in text
