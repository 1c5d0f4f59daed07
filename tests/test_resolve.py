"""Spec resolution follows seed 003's precedence rules exactly."""

from __future__ import annotations

import warnings

import pytest
import torch.nn as nn

from bitsmith.config import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    OpKMeansPalettizerConfig,
    PalettizationSpec,
)
from bitsmith.resolve import UnmatchedConfigWarning, palettizable_modules, resolve_state_specs


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 4)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.layer1 = nn.Sequential(Block(), Block())
        self.attn = nn.MultiheadAttention(4, 2)
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)


def bits(model, config):
    out = {}
    for item in resolve_state_specs(model, config):
        out[item.qualified_name] = None if item.spec is None else item.spec.n_bits
    return out


def spec(n):
    return ModuleKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=n)})


def test_default_config_palettizes_supported_layers_weights_only():
    got = bits(Net(), KMeansPalettizerConfig())
    assert got["stem.weight"] == 4 and got["stem.bias"] is None
    assert got["layer1.0.bn.weight"] is None, "norm layers are not palettizable layers"
    assert got["attn.in_proj_weight"] == 4 and got["attn.out_proj.weight"] == 4 and got["attn.in_proj_bias"] is None
    assert got["emb.weight"] == 4 and got["head.weight"] == 4
    names = [n for n, _ in palettizable_modules(Net())]
    assert names == ["stem", "layer1.0.conv", "layer1.0.fc", "layer1.1.conv", "layer1.1.fc", "attn",
                     "attn.out_proj", "emb", "head"]


def test_name_beats_type_beats_global():
    config = KMeansPalettizerConfig(global_config=spec(2), module_type_configs={nn.Linear: spec(6)},
                                    module_name_configs={"layer1.0.fc": spec(8)})
    got = bits(Net(), config)
    assert got["stem.weight"] == 2 and got["layer1.1.fc.weight"] == 6 and got["layer1.0.fc.weight"] == 8
    assert got["attn.out_proj.weight"] == 6, "subclasses of Linear match a Linear type config"


def test_scoped_only_config_skips_everything_else():
    config = KMeansPalettizerConfig(module_name_configs={"stem": spec(2)})
    got = bits(Net(), config)
    assert got["stem.weight"] == 2
    assert all(v is None for k, v in got.items() if k != "stem.weight")


def test_regex_names_and_none_skips():
    config = KMeansPalettizerConfig(global_config=spec(4), module_name_configs={r"layer1\.\d\.conv": spec(2), "head": None})
    got = bits(Net(), config)
    assert got["layer1.0.conv.weight"] == got["layer1.1.conv.weight"] == 2
    assert got["head.weight"] is None and got["stem.weight"] == 4


def test_parent_scope_governs_children_but_not_norm_layers():
    config = KMeansPalettizerConfig(global_config=spec(4), module_name_configs={"layer1": spec(3)})
    got = bits(Net(), config)
    assert got["layer1.0.conv.weight"] == 3 and got["layer1.1.fc.weight"] == 3
    assert got["layer1.0.bn.weight"] is None


def test_inside_a_module_state_beats_name_beats_type_beats_op_state():
    scope = ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": PalettizationSpec(n_bits=2)},
        op_type_config={nn.Linear: OpKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=6)})},
        op_name_config={"0.fc": OpKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=8)}),
                        "1.conv": None},
    )
    got = bits(Net(), KMeansPalettizerConfig(module_name_configs={"layer1": scope}))
    assert got["layer1.0.conv.weight"] == 2   # op_state_spec
    assert got["layer1.1.fc.weight"] == 6     # op_type_config
    assert got["layer1.0.fc.weight"] == 8     # op_name_config beats op_type_config
    assert got["layer1.1.conv.weight"] is None  # op config None skips
    own = ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": PalettizationSpec(n_bits=2)},
        op_name_config={"head": OpKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=6)})},
        module_state_spec={"weight": PalettizationSpec(n_bits=1)})
    got = bits(Net(), KMeansPalettizerConfig(module_name_configs={"head": own}))
    assert got["head.weight"] == 1  # module_state_spec wins for the scope's own tensors


def test_custom_module_named_explicitly_is_palettized():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            import torch
            self.kernel = nn.Parameter(torch.randn(8, 8))

    model = nn.Sequential(Custom(), nn.LayerNorm(8))
    config = KMeansPalettizerConfig(global_config=spec(4), module_name_configs={"0": ModuleKMeansPalettizerConfig(
        op_state_spec={"kernel": PalettizationSpec(n_bits=2)})})
    got = bits(model, config)
    assert got == {"0.kernel": 2, "1.weight": None, "1.bias": None}


def test_unmatched_keys_warn():
    config = KMeansPalettizerConfig(module_name_configs={"nope": spec(2)}, module_type_configs={nn.GRU: spec(4)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(resolve_state_specs(Net(), config))
    messages = [str(w.message) for w in caught if issubclass(w.category, UnmatchedConfigWarning)]
    assert any("module_name_configs['nope']" in m for m in messages)
    assert any("module_type_configs['torch.nn.modules.rnn.GRU']" in m for m in messages)


def test_rule_of_a_tensor_the_config_does_not_name_says_there_is_no_entry():
    rules = {(r.module_name, r.tensor_name): r.rule for r in resolve_state_specs(Net(), KMeansPalettizerConfig())}
    assert rules[("stem", "weight")] == "global_config.op_state_spec['weight']"
    assert rules[("stem", "bias")] == "global_config.op_state_spec has no entry for 'bias'"
    config = KMeansPalettizerConfig(module_type_configs={nn.Linear: ModuleKMeansPalettizerConfig(
        op_state_spec={"bias": None})})
    rules = {(r.module_name, r.tensor_name): r.rule for r in resolve_state_specs(Net(), config)}
    assert rules[("head", "bias")].endswith(".op_state_spec['bias']")
    assert rules[("head", "weight")].endswith(".op_state_spec has no entry for 'weight'")
