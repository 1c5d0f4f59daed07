"""Compressed records in ``state_dict``: torch.save / load_state_dict round trips, bit for bit."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
from torch import nn

import bitsmith
from bitsmith import compressed, state
from bitsmith.config import QuantizationSpec
from bitsmith.coverage import IncompatibleLayerWarning
from bitsmith.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
    PerGroupedChannelGranularity,
)
from bitsmith.sizes import model_size

from .conftest import tiny_gpt2


def palettize(model, config=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompatibleLayerWarning)
        return KMeansPalettizer(model, config or KMeansPalettizerConfig.presets.w4()).prepare(progress=False)


def through_bytes(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def assert_same_records(a: nn.Module, b: nn.Module) -> int:
    ra = [(m, n, r) for m, _, n, r in compressed.iter_records(a)]
    rb = [(m, n, r) for m, _, n, r in compressed.iter_records(b)]
    assert [(m, n) for m, n, _ in ra] == [(m, n) for m, n, _ in rb]
    for (_, _, x), (_, _, y) in zip(ra, rb):
        assert type(x) is type(y) and x.spec == y.spec
        for field in ("shape", "dtype", "axis"):
            assert getattr(x, field, None) == getattr(y, field, None)
        ex, ey = state.record_state("t", x), state.record_state("t", y)
        assert ex.keys() == ey.keys() and all(torch.equal(ex[k], ey[k]) for k in ex)
    return len(ra)


def test_state_dict_round_trip_into_a_freshly_prepared_model(tokens):
    prepared = palettize(tiny_gpt2(seed=0))
    other = palettize(tiny_gpt2(seed=1))  # same architecture, other weights and records
    result = other.load_state_dict(through_bytes(prepared.state_dict()))
    assert not result.missing_keys and not result.unexpected_keys
    assert assert_same_records(prepared, other) == 11  # 2 embeddings, 8 Conv1D and the tied head
    with torch.no_grad():
        assert torch.equal(other(tokens).logits, prepared(tokens).logits)
    assert model_size(other) == model_size(prepared)


def test_load_state_dict_rebuilds_records_on_an_uncompressed_model(tokens):
    prepared = palettize(tiny_gpt2())
    sd = {k: v for k, v in through_bytes(prepared.state_dict()).items()
          if not k.endswith("c_attn.weight")}  # dense values a file may leave out are rebuilt from the records
    fresh = tiny_gpt2(seed=3)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*transformer\.wte\.weight_bitsmith_spec"):
        fresh.load_state_dict(sd)  # plain torch does not know the records
    bitsmith.load_state_dict(fresh, sd)
    assert assert_same_records(prepared, fresh) == 11
    assert torch.equal(fresh.transformer.h[1].attn.c_attn.weight, prepared.transformer.h[1].attn.c_attn.weight)
    with torch.no_grad():
        assert torch.equal(fresh(tokens).logits, prepared(tokens).logits)


def test_state_entries_are_the_records_own_tensors():
    prepared = palettize(tiny_gpt2())
    sd = prepared.state_dict()
    record = compressed.records(prepared.transformer.h[0].mlp.c_fc)["weight"]
    prefix = "transformer.h.0.mlp.c_fc.weight_bitsmith_"
    assert sd[prefix + "indices"].data_ptr() == record.indices.data_ptr()  # no copy: memory stays records + dense
    assert sd[prefix + "lut"].data_ptr() == record.lut.data_ptr()
    assert sd[prefix + "indices"].dtype == torch.uint8
    meta = state.read_spec(sd[prefix + "spec"], prefix + "spec")
    assert meta == {"format": 1, "kind": "palettized", "name": "weight", "shape": [64, 256], "dtype": "float32",
                    "axis": 1, "spec": bitsmith.config.to_dict(record.spec)}


def test_every_record_kind_round_trips(tokens):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 8))
    rich = PalettizationSpec(n_bits=3, granularity=PerGroupedChannelGranularity(axis=1, group_size=4), cluster_dim=2,
                             lut_qspec=QuantizationSpec(dtype="int8"), enable_per_channel_scale=True)
    config = KMeansPalettizerConfig(module_name_configs={
        "0": ModuleKMeansPalettizerConfig(op_state_spec={"weight": rich}),
        "2": ModuleKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=2)})})
    prepared = palettize(model, config)
    quantization = pytest.importorskip("bitsmith.quantization")
    x = torch.randn(4, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = quantization.Quantizer(prepared, quantization.QuantizerConfig())
        both = quantizer.prepare((x,))
    compressed.attach(both[2], "input.0", compressed.ActivationQuant(torch.tensor(0.05), torch.tensor(3, dtype=torch.int8),
                                                                     QuantizationSpec(dtype="int8")))
    kinds = {type(r).__name__ for *_, r in compressed.iter_records(both)}
    assert kinds == {"PalettizedTensor", "QuantizedTensor", "ActivationQuant"}
    assert compressed.records(both[0])["weight"].lut_quant is not None
    target = copy_architecture(model)
    bitsmith.load_state_dict(target, through_bytes(both.state_dict()))
    assert assert_same_records(both, target) == len(list(compressed.iter_records(both)))
    assert torch.equal(target[4].weight, both[4].weight)


def copy_architecture(model):
    torch.manual_seed(5)
    return nn.Sequential(*(type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else nn.ReLU()
                           for m in model))


def test_a_dense_state_dict_into_a_compressed_model_drops_the_stale_records():
    dense = tiny_gpt2(seed=2).state_dict()
    prepared = palettize(tiny_gpt2())
    result = prepared.load_state_dict(dense, strict=False)
    assert "transformer.h.0.attn.c_attn.weight_bitsmith_spec" in result.missing_keys
    assert not compressed.is_compressed(prepared)  # the records no longer describe the loaded weights
    assert torch.equal(prepared.transformer.h[0].attn.c_attn.weight, dense["transformer.h.0.attn.c_attn.weight"])
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*transformer\.wte\.weight_bitsmith_spec"):
        palettize(tiny_gpt2()).load_state_dict(dense)


def test_a_newer_record_format_is_refused():
    prepared = palettize(tiny_gpt2())
    sd = prepared.state_dict()
    key = "transformer.wpe.weight_bitsmith_spec"
    meta = json.loads(bytes(sd[key].numpy()).decode())
    meta["format"] = 99
    sd[key] = torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=r"transformer\.wpe\.weight: record spec format 99 is not 1; "
                                           r"this bitsmith cannot read it"):
        bitsmith.load_state_dict(tiny_gpt2(), sd)
