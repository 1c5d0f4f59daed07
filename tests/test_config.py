"""Config model: seed 003 snippets, defaults, presets, setters, YAML round-trips, path-precise errors."""

from __future__ import annotations

import attrs
import pytest
import torch
import torch.nn as nn

from bitsmith.config import (
    ConfigError,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    ModuleQuantizerConfig,
    OpKMeansPalettizerConfig,
    OpQuantizerConfig,
    PalettizationSpec,
    PerBlockGranularity,
    PerChannelGranularity,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
    QuantizationScheme,
    QuantizationSpec,
    QuantizerConfig,
    default_weight_palettization_spec,
    from_dict,
    from_yaml,
    load,
    to_dict,
    to_yaml,
)

SEED_YAML_PRESET = """
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

SEED_YAML_TYPES = """
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


def test_spec_snippets_from_seed_003():
    spec = default_weight_palettization_spec()
    assert (spec.n_bits, spec.granularity, spec.cluster_dim, spec.lut_qspec) == (4, PerTensorGranularity(), 1, None)
    spec = PalettizationSpec(n_bits=2, granularity=PerGroupedChannelGranularity(axis=0, group_size=8))
    assert spec.granularity.group_size == 8 and spec.n_clusters == 4
    spec = PalettizationSpec(n_bits=4, lut_qspec=QuantizationSpec(dtype=torch.int8, qscheme="symmetric"))
    assert spec.lut_qspec.qscheme is QuantizationScheme.SYMMETRIC and spec.lut_qspec.dtype is torch.int8
    assert PalettizationSpec(n_bits=4, cluster_dim=2).cluster_dim == 2


def test_default_configs_are_equivalent_as_seed_003_says():
    default = default_weight_palettization_spec()
    expected = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": default, "in_proj_weight": default}))
    assert KMeansPalettizerConfig() == expected
    assert KMeansPalettizerConfig() == KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig())
    assert OpKMeansPalettizerConfig() == OpKMeansPalettizerConfig(op_state_spec={"weight": default, "in_proj_weight": default})


def test_only_scoped_configs_means_no_global():
    cfg = KMeansPalettizerConfig(module_type_configs={
        "torch.nn.modules.linear.Linear": ModuleKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=8)}),
        "torch.nn.modules.conv.Conv2d": ModuleKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=4)}),
    })
    assert cfg.global_config is None
    assert KMeansPalettizerConfig(global_config=None).global_config is None
    assert from_yaml(SEED_YAML_TYPES) == cfg


def test_presets_setters_and_chaining():
    config = KMeansPalettizerConfig.presets.w4()
    assert config.global_config.op_state_spec["weight"].granularity == PerGroupedChannelGranularity(axis=0, group_size=16)
    returned = config.set_module_type(nn.Linear, ModuleKMeansPalettizerConfig.presets.w8())
    assert returned is config
    chained = KMeansPalettizerConfig.presets.w4().set_module_type(nn.Linear, ModuleKMeansPalettizerConfig.presets.w8())
    assert chained == config
    assert list(config.module_type_configs) == ["torch.nn.modules.linear.Linear"]
    w8 = config.module_type_configs["torch.nn.modules.linear.Linear"].op_state_spec["weight"]
    assert (w8.n_bits, w8.granularity) == (8, PerTensorGranularity())
    seed_yaml = from_yaml(SEED_YAML_PRESET)
    assert seed_yaml.global_config.op_state_spec["weight"] == config.global_config.op_state_spec["weight"]
    assert config.set_global(None).set_module_name("fc", None).module_name_configs == {"fc": None}
    assert config.global_config is None


def test_module_type_aliases_normalize():
    a = KMeansPalettizerConfig().set_module_type("Linear", None)
    b = KMeansPalettizerConfig().set_module_type("torch.nn.Linear", None)
    c = KMeansPalettizerConfig().set_module_type(nn.Linear, None)
    assert a == b == c


ALL_CONFIGS = [
    KMeansPalettizerConfig(),
    KMeansPalettizerConfig(global_config=None),
    KMeansPalettizerConfig.presets.w4().set_module_type(nn.Linear, ModuleKMeansPalettizerConfig.presets.w8()),
    KMeansPalettizerConfig(module_name_configs={"layer1.*": ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": PalettizationSpec(n_bits=3, cluster_dim=2, enable_per_channel_scale=True,
                                                  lut_qspec=QuantizationSpec(dtype="uint8", qscheme="asymmetric"))},
        op_name_config={"0.conv": None, "1.conv": OpKMeansPalettizerConfig()},
        op_type_config={nn.Conv2d: OpKMeansPalettizerConfig(op_state_spec={"weight": None})},
        module_state_spec={"weight": PalettizationSpec(n_bits=6)}), "fc": None}),
    QuantizerConfig(),
    QuantizerConfig(global_config=ModuleQuantizerConfig(
        op_state_spec=None,
        op_input_spec={"*": QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC)},
        op_output_spec={"*": QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC)})),
    QuantizerConfig.presets.w8().set_module_name("head", ModuleQuantizerConfig(
        op_state_spec={"weight": QuantizationSpec(dtype="int4", granularity=PerBlockGranularity(axis=1, block_size=16))},
        op_type_config={nn.Linear: OpQuantizerConfig(op_input_spec={"0": None})},
        module_output_spec={"0": QuantizationSpec(dtype="uint8", granularity=PerChannelGranularity(axis=1))})),
]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=range(len(ALL_CONFIGS)))
def test_round_trip_dict_and_yaml(config):
    assert from_dict(to_dict(config), type(config)) == config
    text = to_yaml(config)
    assert from_yaml(text) == config
    assert from_yaml(text, type(config)) == config
    assert to_yaml(from_yaml(text)) == text


def test_load_accepts_path_text_dict_and_object(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(SEED_YAML_PRESET)
    from_path = load(path)
    assert load(str(path)) == from_path == load(SEED_YAML_PRESET)
    assert load(to_dict(from_path), KMeansPalettizerConfig) == from_path
    assert load(from_path, KMeansPalettizerConfig) is from_path


@pytest.mark.parametrize("data, message", [
    ({"global_config": {"op_state_spec": {"weight": {"n_bits": 5}}}},
     "global_config.op_state_spec.weight.n_bits: 5 is not one of 1, 2, 3, 4, 6, 8"),
    ({"global_config": {"op_state_spec": {"weight": {"n_bits": "4"}}}},
     "global_config.op_state_spec.weight.n_bits: expected an integer, got '4'"),
    ({"global_config": {"op_state_spec": {"weight": {"granularity": {"type": "per_grouped_chanel"}}}}},
     "global_config.op_state_spec.weight.granularity.type: 'per_grouped_chanel' is not one of per_tensor, "
     "per_grouped_channel (did you mean 'per_grouped_channel'?)"),
    ({"global_config": {"op_state_spec": {"weight": {"granularity": {"type": "per_grouped_channel", "axis": 2}}}}},
     "global_config.op_state_spec.weight.granularity.axis: 2 is not one of 0, 1"),
    ({"global_config": {"op_state_spec": {"weight": {"nbits": 4}}}},
     "global_config.op_state_spec.weight.nbits: unknown key (did you mean 'n_bits'?); allowed keys: n_bits, "
     "granularity, cluster_dim, lut_qspec, enable_per_channel_scale"),
    ({"module_type_configs": {"torch.nn.Linaer": {}}},
     "module_type_configs.torch.nn.Linaer: unknown module type 'torch.nn.Linaer'; did you mean torch.nn.Linear"),
    ({"module_name_configs": {"fc": {"op_state_spec": {"weight": {"lut_qspec": {"dtype": "int16"}}}}}},
     "module_name_configs.fc.op_state_spec.weight.lut_qspec.dtype: 'int16' is not one of int8, uint8"),
    ({"module_name_configs": {"fc": {"op_state_spec": {"weight": {"lut_qspec": {"dtype": "int4"}}}}}},
     "module_name_configs.fc.op_state_spec.weight.lut_qspec.dtype: 'int4' is not one of int8, uint8, "
     "float8_e4m3fn, float8_e5m2"),
    ({"global_config": {"op_state_spec": {"weight": {"cluster_dim": 3, "granularity": {
        "type": "per_grouped_channel", "group_size": 8}}}}},
     "global_config.op_state_spec.weight.cluster_dim: 3 must divide granularity.group_size 8"),
    ({"global_config": {"op_state_spec": {"weight": {"enable_per_channel_scale": "yes"}}}},
     "global_config.op_state_spec.weight.enable_per_channel_scale: expected true or false, got 'yes'"),
])
def test_palettization_errors_are_path_precise(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(data, KMeansPalettizerConfig)
    assert any(line.startswith(message) for line in info.value.lines), info.value.lines


def test_every_error_is_reported_not_just_the_first():
    with pytest.raises(ConfigError) as info:
        from_dict({"global_config": {"op_state_spec": {"weight": {"n_bits": 5}, "in_proj_weight": {"cluster_dim": 0}}},
                   "extra": 1}, KMeansPalettizerConfig)
    text = str(info.value)
    assert "global_config.op_state_spec.weight.n_bits: 5" in text
    assert "global_config.op_state_spec.in_proj_weight.cluster_dim: 0 must be >= 1" in text
    assert "extra: unknown key" in text


@pytest.mark.parametrize("data, message", [
    ({"global_config": {"op_state_spec": {"weight": {"dtype": "float8_e4m3fn", "qscheme": "asymmetric"}}}},
     "global_config.op_state_spec.weight.qscheme: 'asymmetric' is not allowed with dtype float8_e4m3fn"),
    ({"global_config": {"op_state_spec": {"weight": {"qscheme": "sym"}}}},
     "global_config.op_state_spec.weight.qscheme: 'sym' is not one of symmetric, asymmetric"),
    ({"global_config": {"op_input_spec": {"*": {"granularity": {"type": "per_grouped_channel"}}}}},
     "global_config.op_input_spec.*.granularity.type: 'per_grouped_channel' is not one of per_tensor, per_channel, per_block"),
])
def test_quantization_errors_are_path_precise(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(data, QuantizerConfig)
    assert any(line.startswith(message) for line in info.value.lines), info.value.lines


def test_yaml_errors_carry_the_top_level_key():
    with pytest.raises(ConfigError) as info:
        from_yaml("kmeans_palettization_config:\n  global_config:\n    op_state_spec:\n      weight: {n_bits: 7}\n")
    assert info.value.lines == [
        "kmeans_palettization_config.global_config.op_state_spec.weight.n_bits: 7 is not one of 1, 2, 3, 4, 6, 8"]
    with pytest.raises(ConfigError, match="top level: expected one of the keys kmeans_palettization_config"):
        from_yaml("something_else: {}")


def test_constructor_validation_matches_converter():
    with pytest.raises(ValueError, match="n_bits: 5 is not one of"):
        PalettizationSpec(n_bits=5)
    with pytest.raises(TypeError, match="granularity"):
        PalettizationSpec(granularity=PerChannelGranularity())
    with pytest.raises(ValueError, match="float8 values have no zero point"):
        QuantizationSpec(dtype=torch.float8_e5m2, qscheme="asymmetric")
    with pytest.raises(TypeError, match="module_name_configs"):
        KMeansPalettizerConfig().set_module_name("x", "not a config")



@attrs.define
class _Step:
    backend: str


@attrs.define
class _Job:
    steps: list[_Step]


def test_missing_required_key_in_a_list_item_is_named_once():
    with pytest.raises(ConfigError) as info:
        from_dict({"steps": [{"backend": "onnx"}, {}]}, _Job)
    assert info.value.lines == ["steps.1.backend: required key is missing"]


def test_config_sections_come_from_the_registry_and_a_clash_names_both_classes():
    from typing import ClassVar

    from attrs import define

    import bitsmith
    from bitsmith.config.converter import config_sections
    from bitsmith.palettization import Palettizer
    from bitsmith.plugins import Registry

    @define(kw_only=True)
    class UniformConfig(KMeansPalettizerConfig):
        yaml_key: ClassVar[str] = "uniform_palettization_config"

    @define(kw_only=True)
    class Clash(KMeansPalettizerConfig):
        yaml_key: ClassVar[str] = "kmeans_palettization_config"

    def plugin(name, config_class):
        class Plugin:
            @bitsmith.hookimpl
            def palettizer(self, register):
                register(name, type(f"{name}Palettizer", (Palettizer,), {"config_class": config_class}))
        return Plugin()

    sections = config_sections(Registry(autoload=False, plugins=[plugin("uniform", UniformConfig)]))
    assert sections["uniform_palettization_config"] is UniformConfig
    assert sections["kmeans_palettization_config"] is KMeansPalettizerConfig
    with pytest.raises(ConfigError, match=r"kmeans_palettization_config: claimed by "
                                          r"bitsmith\.config\.palettization\.KMeansPalettizerConfig and by .*Clash"):
        config_sections(Registry(autoload=False, plugins=[plugin("clash", Clash)]))


def test_scopes_and_from_specs():
    config = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(),
                                    module_name_configs={"fc": None, "conv": ModuleKMeansPalettizerConfig()})
    assert [path for path, _ in config.scopes()] == ["global_config", "module_name_configs.conv"]
    assert config.algorithms() == {None}
    assert KMeansPalettizerConfig.from_specs(config) == config
    with pytest.raises(ValueError, match="options: KMeansPalettizerConfig takes no algorithm options"):
        KMeansPalettizerConfig.from_specs(config, options={"x": 1})
