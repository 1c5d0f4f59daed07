"""Core helpers the export backends and pipelines share: bit packing, bitsmith.load, activation hooks."""

from __future__ import annotations

import math

import pytest
import torch

import bitsmith
from bitsmith import compressed
from bitsmith.compressed import ActivationQuant
from bitsmith.config import QuantizationSpec
from bitsmith.errors import ConfigError, PluginError
from bitsmith.loading import disable_activation_quant, enable_activation_quant, import_callable
from bitsmith.packing import CHUNK, pack_bits, packed_nbytes, unpack_bits


@pytest.mark.parametrize("n_bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001])
def test_pack_round_trip_and_size(n_bits, count):
    values = torch.randint(0, 2**n_bits, (count,), generator=torch.Generator().manual_seed(count))
    packed = pack_bits(values, n_bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(count, n_bits) == (count if n_bits == 8 else math.ceil(count / 8) * n_bits)
    assert torch.equal(unpack_bits(packed, n_bits, count), values.to(torch.uint8))


def test_bit_order_is_lsb_first():
    # 3-bit values 1, 2, 7: bits 001 | 010 | 111 -> 0b11_010_001 = 0xD1, then the high bit of 7 in byte 1
    assert pack_bits(torch.tensor([1, 2, 7]), 3).tolist() == [0xD1, 0x01, 0x00]
    assert pack_bits(torch.tensor([0xA, 0x5]), 4).tolist() == [0x5A, 0, 0, 0]


@pytest.mark.parametrize("n_bits", [1, 3, 4, 6])
def test_packing_across_chunks_matches_the_bit_stream_definition(n_bits):
    count = 2 * CHUNK + 13  # three chunks, the last one ragged
    values = torch.randint(0, 2**n_bits, (count,), generator=torch.Generator().manual_seed(n_bits))
    packed = pack_bits(values, n_bits)
    assert packed.numel() == packed_nbytes(count, n_bits)
    # the documented layout, computed the slow way: value i occupies bits i*n .. i*n+n-1, LSB first
    bits = ((values[:, None] >> torch.arange(n_bits)) & 1).reshape(-1)
    bits = torch.cat([bits, bits.new_zeros(packed.numel() * 8 - bits.numel())])
    expected = (bits.reshape(-1, 8) << torch.arange(8)).sum(1).to(torch.uint8)
    assert torch.equal(packed, expected)
    assert torch.equal(unpack_bits(packed, n_bits, count), values.to(torch.uint8))


def test_pack_errors():
    with pytest.raises(ValueError, match=r"values must lie in \[0, 4\) to pack at 2 bits; got range \[0, 4\]"):
        pack_bits(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match="n_bits: 9 is not one of"):
        pack_bits(torch.tensor([0]), 9)
    with pytest.raises(ValueError, match="10 values at 3 bits take 6 packed bytes; got 5"):
        unpack_bits(torch.zeros(5, dtype=torch.uint8), 3, 10)


def test_import_callable_errors():
    assert import_callable("torch.nn:Linear") is torch.nn.Linear
    with pytest.raises(ConfigError, match="data: expected 'package.module:function', got 'torch.nn.Linear'"):
        import_callable("torch.nn.Linear", field="data")
    with pytest.raises(ConfigError, match="model: cannot import module 'no_such_module_xyz'"):
        import_callable("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="model: module 'torch.nn' has no attribute 'Lniear'; callables there: "):
        import_callable("torch.nn:Lniear")


def test_activation_hooks_fake_quantize_inputs_and_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    spec = QuantizationSpec(dtype="int8", qscheme="asymmetric")
    compressed.attach(model[0], "input.0", ActivationQuant(scale=torch.tensor(0.1), zero_point=torch.tensor(2),
                                                           spec=spec))
    compressed.attach(model[0], "output.0", ActivationQuant(scale=torch.tensor(0.05), zero_point=None,
                                                            spec=QuantizationSpec(dtype="int8")))
    x = torch.randn(5, 4)
    plain = model(x)
    assert enable_activation_quant(model) == 1 and enable_activation_quant(model) == 1  # idempotent: same hooks again
    assert len(model[0]._forward_pre_hooks) == 1 and len(model[0]._forward_hooks) == 1
    xq = torch.clamp(torch.round(x / 0.1) + 2, -128, 127)
    with torch.no_grad():
        out = model(x)
        inner = torch.nn.functional.linear((xq - 2) * 0.1, model[0].weight, model[0].bias)
        assert torch.equal(out, torch.clamp(torch.round(inner / 0.05), -128, 127) * 0.05)
    disable_activation_quant(model)
    assert torch.equal(model(x), plain)


def test_load_errors(tmp_path, bitsmith_registry):
    with pytest.raises(FileNotFoundError, match="no such file"):
        bitsmith.load(tmp_path / "missing.safetensors", torch.nn.Identity)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(PluginError, match=r"no export backend reads '\.safetensors'; readable suffixes: none "
                                          r"installed; install bitsmith-export-safetensors"):
        bitsmith.load(path, torch.nn.Identity)
    with pytest.raises(PluginError, match="no export backend named 'nope'"):
        bitsmith.load(path, torch.nn.Identity, backend="nope")


def test_lazy_top_level_names():
    from bitsmith.loading import load
    from bitsmith.pipeline import compress

    assert bitsmith.load is load and bitsmith.compress is compress
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        bitsmith.nonexistent  # noqa: B018
