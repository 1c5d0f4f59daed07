"""Every palettization snippet of seeds 000, 002 and 003, run through the installed plugins.

The snippets are copied from the seeds with ``coreai_opt`` replaced by ``bitsmith`` and run
on real or small stand-in models (``model`` / ``fp32_model``); each test then checks that
the snippet did what the seed says. Needs bitsmith-kmeans and bitsmith-export-coreai (and
bitsmith-int8-quant for the activation half of seed 002).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import bitsmith
from bitsmith import compressed
from bitsmith.resolve import palettizable_modules
from bitsmith.sizes import model_size

pytest.importorskip("bitsmith_kmeans", reason="needs the bitsmith-kmeans plugin")
pytest.importorskip("bitsmith_export_coreai", reason="needs the bitsmith-export-coreai plugin")


def weights(model):
    return {n: t.detach().clone() for n, t in model.named_parameters()}


def distinct(t):
    return torch.unique(t.detach()).numel()


@pytest.fixture(scope="module")
def mobilenet():
    zoo = pytest.importorskip("bitsmith_zoo.mobilenet_v2", reason="needs bitsmith_zoo")
    return zoo.load_mobilenet_v2(pretrained=True)


# --------------------------------------------------------------------------- seed 000


def test_seed_000_uniform_4bit_per_tensor(mobilenet):
    model = mobilenet
    before = weights(model)
    import torch
    from bitsmith.palettization import (
        KMeansPalettizer,
        KMeansPalettizerConfig,
        ModuleKMeansPalettizerConfig,
        PalettizationSpec,
    )
    from bitsmith.palettization.spec import PerTensorGranularity
    cfg = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={
                "weight": PalettizationSpec(n_bits=4, granularity=PerTensorGranularity()),
            },
        ),
    )
    palettizer = KMeansPalettizer(model, cfg)
    palettized_model = palettizer.prepare(example_inputs=(torch.randn(1, 3, 224, 224),))

    layers = palettizable_modules(palettized_model)
    assert len(layers) == 53  # 52 convolutions + the classifier
    for name, layer in layers:
        assert isinstance(compressed.records(layer)["weight"], compressed.PalettizedTensor), name
        assert distinct(layer.weight) <= 16, name
    report = palettizer.report()
    assert len(report.layers) == 53 and report.bpw_index == 4.0
    assert report.bpw == pytest.approx(4.0, abs=0.02)  # a small LUT overhead on top of the indices
    assert all(torch.equal(before[n], t) for n, t in weights(model).items())  # prepare() works on a copy
    with torch.no_grad():
        assert palettized_model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_seed_000_one_layer_at_a_time(mobilenet):
    model = mobilenet
    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig, ModuleKMeansPalettizerConfig
    from bitsmith.palettization import PalettizationSpec
    from bitsmith.palettization.spec import PerTensorGranularity
    names = [name for name, _ in palettizable_modules(model)]
    first = names[0]  # MobileNetV2's "conv1"
    cfg = KMeansPalettizerConfig(
        global_config=None,
        module_name_configs={
            first: ModuleKMeansPalettizerConfig(
                op_state_spec={
                    "weight": PalettizationSpec(
                        n_bits=2, granularity=PerTensorGranularity()
                    ),
                },
            ),
        },
    )
    palettizer = KMeansPalettizer(model, cfg)
    single = palettizer.prepare(example_inputs=(torch.randn(1, 3, 224, 224),))
    assert first == "features.0.0"
    assert [(n, t) for n, _, t, _ in compressed.iter_records(single)] == [(first, "weight")]
    assert distinct(single.features[0][0].weight) == 4
    assert [row.spec for row in palettizer.report().layers] == ["2-bit"]


@pytest.mark.parametrize("n_bits, kib", [(2, 2.31), (4, 4.66), (6, 7.14)])
def test_seed_000_sensitivity_table_sizes(n_bits, kib):
    # ResNet50's conv1 (64x3x7x7): the first rows of seed 000's sensitivity table
    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig, ModuleKMeansPalettizerConfig
    from bitsmith.palettization import PalettizationSpec
    from bitsmith.palettization.spec import PerTensorGranularity

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False))
    cfg = KMeansPalettizerConfig(global_config=None, module_name_configs={"conv1": ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": PalettizationSpec(n_bits=n_bits, granularity=PerTensorGranularity())})})
    palettizer = KMeansPalettizer(model, cfg)
    palettizer.prepare(example_inputs=(torch.randn(1, 3, 224, 224),), progress=False)
    assert round(palettizer.report().layers[0].kib_after, 2) == kib


# --------------------------------------------------------------------------- seed 002


class TinySR(nn.Module):
    """An EDSR-shaped stand-in: head conv, two residual blocks, 2x pixel-shuffle tail."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.ModuleList(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                                nn.Conv2d(32, 32, 3, padding=1)) for _ in range(2))
        self.tail = nn.Sequential(nn.Conv2d(32, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        h = self.head(x)
        for block in self.body:
            h = h + block(h)
        return self.tail(h)


def test_seed_002_joint_palettization_and_int8_activations():
    torch.manual_seed(0)
    fp32_model = TinySR().eval()
    calibration_images = [torch.rand(1, 3, 24, 24) for _ in range(4)]
    example_inputs = (calibration_images[0],)
    from bitsmith.palettization import (
        KMeansPalettizer,
        KMeansPalettizerConfig,
        ModuleKMeansPalettizerConfig,
    )
    from bitsmith.palettization.spec import PalettizationSpec
    from bitsmith.quantization.spec import QuantizationScheme, QuantizationSpec
    palett_spec = PalettizationSpec(
        n_bits=4,
        lut_qspec=QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC),
    )
    palett_config = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={"weight": palett_spec},
        )
    )
    import bitsmith as opt
    # Step 1: palettize weights
    palettizer = KMeansPalettizer(fp32_model, palett_config)
    prepared_pal = palettizer.prepare(example_inputs)
    palettized = palettizer.finalize(backend=opt.ExportBackend.CoreAI)

    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(palettized(x), prepared_pal(x))
    head = palettized.head
    assert head.weight_lut_int.dtype == torch.int8 and head.weight_lut_int.shape == (1, 16, 1)
    assert "head.weight" not in palettized.state_dict() and "head.weight_indices" in palettized.state_dict()
    size = model_size(palettized)
    assert size.compressed.bpw_index == 4.0
    assert size.compressed.bytes < model_size(fp32_model).total.bytes / 7.5  # ~8x smaller weights

    quantizer_cls = _quantizer()
    from bitsmith.quantization import ModuleQuantizerConfig, QuantizerConfig
    act_spec = QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC)
    quant_config = QuantizerConfig(
        global_config=ModuleQuantizerConfig(
            op_state_spec=None,
            op_input_spec={"*": act_spec},
            op_output_spec={"*": act_spec},
        )
    )
    Quantizer = quantizer_cls
    # Step 2: quantize activations on the palettized model
    quantizer = Quantizer(palettized, quant_config)
    prepared_model = quantizer.prepare(example_inputs)
    with quantizer.calibration_mode():
        with torch.no_grad():
            for lr_image in calibration_images:
                prepared_model(lr_image)
    finalized_model = quantizer.finalize(backend=opt.ExportBackend.CoreAI)

    with torch.no_grad():
        joint, float_pal = prepared_model(x), palettized(x)
        exported = finalized_model(x)
    assert 0 < (joint - float_pal).abs().max() < 0.1 * float_pal.abs().max()
    assert torch.equal(exported, joint)  # Q/DQ pairs reproduce the calibrated fake quantization here
    graph = str(torch.jit.trace(finalized_model, (x,)).inlined_graph)
    assert "aten::quantize_per_tensor" in graph and "aten::index" in graph
    kinds = {type(r).__name__ for *_, r in compressed.iter_records(finalized_model)}
    assert kinds == {"PalettizedTensor", "ActivationQuant"}


def _quantizer():
    from bitsmith.errors import PluginError

    try:
        return bitsmith.plugins.get("quantizer", "int8")
    except PluginError as exc:
        pytest.skip(f"needs bitsmith-int8-quant: {exc}")


# --------------------------------------------------------------------------- seed 003


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.conv1d = nn.Conv1d(32, 16, 1)
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        h = torch.relu(self.conv(x))                  # B, 32, H, W
        seq = self.conv1d(h.flatten(2))               # B, 16, H*W
        return self.fc(h.mean((2, 3))) + seq.mean(2)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = Mixed().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)  # Gaussian weights: k-means++ seeds matter
    return m


def test_seed_003_spec_examples(model):
    import torch

    from bitsmith.palettization import PalettizationSpec
    from bitsmith.palettization.spec import (
        PerGroupedChannelGranularity,
        default_weight_palettization_spec,
    )
    from bitsmith.quantization import QuantizationSpec
    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig, ModuleKMeansPalettizerConfig

    specs = []
    # 4-bit per-tensor (default — 16 centroids)
    spec = default_weight_palettization_spec()
    specs.append(spec)
    # 2-bit per group of 8 channels — finer granularity, better accuracy
    spec = PalettizationSpec(
        n_bits=2,
        granularity=PerGroupedChannelGranularity(axis=0, group_size=8),
    )
    specs.append(spec)
    # 4-bit with quantized LUT entries — LUT centroids stored as INT8
    spec = PalettizationSpec(
        n_bits=4,
        lut_qspec=QuantizationSpec(dtype=torch.int8, qscheme="symmetric"),
    )
    specs.append(spec)
    # Cluster pairs of weight values instead of individual scalars
    spec = PalettizationSpec(n_bits=4, cluster_dim=2)
    specs.append(spec)

    records = []
    for s in specs:
        cfg = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": s}))
        prepared = KMeansPalettizer(model, cfg).prepare(progress=False, seed=0)
        records.append(compressed.records(prepared.conv)["weight"])
    default, grouped, int8_lut, pairs = records
    assert default.lut.shape == (1, 16, 1)
    assert grouped.lut.shape == (4, 4, 1)  # 32 output channels / 8
    assert int8_lut.lut_quant.int_lut.dtype == torch.int8
    assert torch.equal(int8_lut.lut, int8_lut.lut_quant.int_lut.float() * int8_lut.lut_quant.scale[:, None, None])
    assert pairs.lut.shape == (1, 16, 2) and pairs.indices.shape == (16, 16, 3, 3)


def test_seed_003_reproducibility_with_cluster_dim(model):
    import numpy as np

    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig, ModuleKMeansPalettizerConfig
    from bitsmith.palettization import PalettizationSpec

    config = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": PalettizationSpec(n_bits=4, cluster_dim=2)}))
    example_inputs = (torch.randn(1, 16, 6, 6),)

    # model gets different weights when we run it multiple times
    model_1 = KMeansPalettizer(model, config).prepare(example_inputs)
    model_2 = KMeansPalettizer(model, config).prepare(example_inputs)
    assert not torch.equal(model_1.conv.weight, model_2.conv.weight)

    seed = 42

    # models now have identical palettized weights
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_1 = KMeansPalettizer(model, config).prepare(example_inputs)

    np.random.seed(seed)
    torch.manual_seed(seed)
    model_2 = KMeansPalettizer(model, config).prepare(example_inputs)
    for a, b in zip(weights(model_1).values(), weights(model_2).values()):
        assert torch.equal(a, b)

    # scalar palettization (cluster_dim == 1, the default) is deterministic and needs no seeding
    scalar = KMeansPalettizerConfig()
    assert torch.equal(KMeansPalettizer(model, scalar).prepare(example_inputs).fc.weight,
                       KMeansPalettizer(model, scalar).prepare(example_inputs).fc.weight)


def test_seed_003_default_configs_are_equivalent(model):
    from bitsmith.palettization import (
        KMeansPalettizer,
        KMeansPalettizerConfig,
        ModuleKMeansPalettizerConfig,
        OpKMeansPalettizerConfig,
        default_weight_palettization_spec,
    )

    # All three of these produce equivalent default palettization settings:
    config = KMeansPalettizerConfig()
    # is equivalent to:
    config_2 = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig())
    # which is equivalent to:
    config_3 = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={
                "weight": default_weight_palettization_spec(),
                "in_proj_weight": default_weight_palettization_spec(),
            },
        )
    )
    op_config = OpKMeansPalettizerConfig()
    # is equivalent to:
    op_config_2 = OpKMeansPalettizerConfig(
        op_state_spec={
            "weight": default_weight_palettization_spec(),
            "in_proj_weight": default_weight_palettization_spec(),
        },
    )
    assert config == config_2 == config_3 and op_config == op_config_2
    results = [weights(KMeansPalettizer(model, c).prepare(progress=False)) for c in (config, config_2, config_3)]
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]) and torch.equal(results[0][name], results[2][name])
    # weights and in_proj_weight only: biases stay exact
    assert torch.equal(results[0]["fc.bias"], model.fc.bias) and distinct(results[0]["conv.weight"]) <= 16


YAML_W4_LINEAR_W8 = """
kmeans_palettization_config:
  global_config:
    op_state_spec:
      weight:
        n_bits: 4
        granularity: { type: per_grouped_channel, axis: 0, group_size: 16 }
  module_type_configs:
    torch.nn.modules.linear.Linear:
      op_state_spec:
        weight:
          n_bits: 8
          granularity: { type: per_tensor }
"""


def test_seed_003_presets_with_linear_override_and_yaml(model):
    # programmatic — using presets
    import torch.nn as nn
    from bitsmith.palettization import (
        KMeansPalettizerConfig,
        ModuleKMeansPalettizerConfig,
    )
    from bitsmith.palettization import KMeansPalettizer

    # define a config that applies 4-bit per-grouped-channel palettization to all supported layers
    config = KMeansPalettizerConfig.presets.w4()

    # then update this config, to change the palettization for just the linear layers: to 8-bit per-tensor
    config.set_module_type(nn.Linear, ModuleKMeansPalettizerConfig.presets.w8())
    chained = KMeansPalettizerConfig.presets.w4().set_module_type(
        nn.Linear, ModuleKMeansPalettizerConfig.presets.w8()
    )

    from_yaml = bitsmith.config.load(YAML_W4_LINEAR_W8)
    prepared = [KMeansPalettizer(model, c).prepare(progress=False) for c in (config, chained, from_yaml)]
    conv = compressed.records(prepared[0].conv)["weight"]
    fc = compressed.records(prepared[0].fc)["weight"]
    assert conv.spec.describe() == "4-bit g16" and conv.num_luts == 2
    assert fc.spec.describe() == "8-bit" and fc.num_luts == 1
    assert compressed.records(prepared[0].conv1d)["weight"].spec.n_bits == 4
    for other in prepared[1:]:
        for a, b in zip(weights(prepared[0]).values(), weights(other).values()):
            assert torch.equal(a, b)


YAML_TYPES_ONLY = """
kmeans_palettization_config:
  module_type_configs:
    torch.nn.modules.linear.Linear:
      op_state_spec:
        weight:
          n_bits: 8
          granularity: { type: per_tensor }
    torch.nn.modules.conv.Conv2d:
      op_state_spec:
        weight:
          n_bits: 4
          granularity: { type: per_tensor }
"""


def test_seed_003_only_listed_module_types(model):
    # programmatic — explicit (scoped to specific module types)
    from bitsmith.palettization import (
        KMeansPalettizerConfig,
        ModuleKMeansPalettizerConfig,
        PalettizationSpec,
    )
    from bitsmith.palettization import KMeansPalettizer

    config = KMeansPalettizerConfig(
        module_type_configs={
            "torch.nn.modules.linear.Linear": ModuleKMeansPalettizerConfig(
                op_state_spec={"weight": PalettizationSpec(n_bits=8)},
            ),
            "torch.nn.modules.conv.Conv2d": ModuleKMeansPalettizerConfig(
                op_state_spec={"weight": PalettizationSpec(n_bits=4)},
            ),
        },
    )
    for cfg in (config, bitsmith.config.load(YAML_TYPES_ONLY)):
        prepared = KMeansPalettizer(model, cfg).prepare(progress=False)
        assert {n: r.spec.n_bits for n, _, _, r in compressed.iter_records(prepared)} == {"conv": 4, "fc": 8}
        assert torch.equal(prepared.conv1d.weight, model.conv1d.weight)  # not listed: left alone
        assert distinct(prepared.conv.weight) <= 16 and distinct(prepared.fc.weight) <= 256


def test_seed_003_finalize_backends_agree_with_the_prepared_model(model):
    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig

    palettizer = KMeansPalettizer(model, KMeansPalettizerConfig.presets.w4())
    prepared = palettizer.prepare(progress=False)
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        expected = prepared(x)
        for backend in (bitsmith.ExportBackend.CoreAI, "coreai", bitsmith.ExportBackend.Torch):
            assert torch.equal(palettizer.finalize(backend=backend)(x), expected)
    assert compressed.is_compressed(prepared)  # finalize works on a copy
    assert "weight" in dict(prepared.conv.named_parameters())
