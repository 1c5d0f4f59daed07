"""The "coreai" backend: buffers as documented, outputs equal to the prepared model, Q/DQ activations."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from bitsmith.testing.backend_models import SPECS, Net, act, int8_record, palettize
from torch import nn

import bitsmith
from bitsmith import compressed
from bitsmith.errors import CompressionError
from bitsmith.loading import enable_activation_quant
from bitsmith.sizes import model_size
from bitsmith.testing import check_export_backend
from bitsmith_export_coreai.activations import QDQ
from bitsmith_export_coreai.backend import CoreAIBackend
from bitsmith_export_coreai.modules import FORMAT_VERSION, CoreAIModule

BACKEND = CoreAIBackend()


def finalize(model):
    return BACKEND.finalize(copy.deepcopy(model))


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_palettized_weights_are_bit_identical(kind, net, inputs):
    palettize(net.conv1, "weight", SPECS[kind])
    palettize(net.fc, "weight", SPECS[kind], outliers=5 if kind == "everything" else 0)
    with torch.no_grad():
        expected = net(inputs)
        out = finalize(net)(inputs)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("per_block", [False, True])
def test_int8_weights_are_bit_identical(per_block, net, inputs):
    for layer in (net.conv2, net.fc):
        compressed.apply(layer, "weight", int8_record(layer.weight, per_block))
    with torch.no_grad():
        expected = net(inputs)
        exported = finalize(net)
        assert torch.equal(exported(inputs), expected)
    assert torch.equal(exported.conv2.weight, compressed.records(net.conv2)["weight"].dequantize())


def test_palettized_buffers_have_the_documented_names_shapes_and_dtypes(net):
    palettize(net.conv2, "weight", SPECS["everything"], outliers=3)  # (16, 16, 3, 3), g8, cd2, 2-bit
    palettize(net.conv1, "weight", SPECS["per_tensor_4bit"])
    exported = finalize(net)
    conv2 = exported.conv2
    got = {name: (tuple(b.shape), b.dtype) for name, b in conv2.named_buffers()}
    assert got == {
        "weight_lut_int": ((2, 4, 2), torch.int8),
        "weight_lut_scale": ((2,), torch.float32),
        "weight_lut_zero_point": ((2,), torch.int8),
        "weight_indices": ((8, 16, 3, 3), torch.uint8),
        "weight_per_channel_scale": ((16,), torch.float32),
        "weight_outlier_indices": ((3,), torch.int64),
        "weight_outlier_values": ((3,), torch.float32),
        "weight_lut_params": ((5,), torch.int64),
    }
    assert conv2.weight_lut_params.tolist() == [FORMAT_VERSION, 2, 0, 2, 8]
    assert {name: (tuple(b.shape), b.dtype) for name, b in exported.conv1.named_buffers()} == {
        "weight_lut": ((1, 16, 1), torch.float32), "weight_indices": ((16, 4, 3, 3), torch.uint8),
        "weight_lut_params": ((5,), torch.int64)}
    # plain structure: same module tree and class, the weight is no parameter but is computed
    assert [n for n, _ in exported.named_modules()] == [n for n, _ in net.named_modules()]
    assert isinstance(conv2, nn.Conv2d) and isinstance(conv2, CoreAIModule) and type(conv2).__name__ == "CoreAIConv2d"
    assert "weight" not in dict(conv2.named_parameters()) and "bias" in dict(conv2.named_parameters())
    assert "conv2.weight" not in exported.state_dict() and "conv2.weight_indices" in exported.state_dict()
    assert torch.equal(conv2.weight, compressed.records(net.conv2)["weight"].dequantize())


def test_int8_buffers(net):
    compressed.apply(net.fc, "weight", int8_record(net.fc.weight, per_block=True))
    compressed.apply(net.conv1, "weight", int8_record(net.conv1.weight))
    exported = finalize(net)
    assert {n: (tuple(b.shape), b.dtype) for n, b in exported.fc.named_buffers()} == {
        "weight_int": ((8, 256), torch.int8), "weight_scale": ((8, 64), torch.float32),
        "weight_zero_point": ((8, 64), torch.int8)}
    assert {n: (tuple(b.shape), b.dtype) for n, b in exported.conv1.named_buffers()} == {
        "weight_int": ((16, 4, 3, 3), torch.int8), "weight_scale": ((16, 1, 1, 1), torch.float32)}


def test_weight_is_computed_from_the_buffers(net, inputs):
    palettize(net.conv1, "weight", SPECS["per_tensor_4bit"])
    exported = finalize(net)
    with torch.no_grad():
        before = exported(inputs)
        exported.conv1.weight_lut.mul_(2)  # edit the LUT: the weight follows
        assert torch.equal(exported.conv1.weight, 2 * compressed.records(net.conv1)["weight"].dequantize())
        assert not torch.equal(exported(inputs), before)


def test_traced_graph_holds_the_lut_gather_and_quantize_dequantize(net, inputs):
    palettize(net.conv1, "weight", SPECS["per_tensor_4bit"])
    compressed.attach(net.fc, "input.0", act(scale=0.02))
    exported = finalize(net)
    graph = str(torch.jit.trace(exported, inputs).inlined_graph)
    assert "aten::index" in graph and "aten::quantize_per_tensor" in graph and "aten::dequantize" in graph


def test_activation_records_become_quantize_dequantize_pairs(net, inputs):
    palettize(net.conv1, "weight", SPECS["lut_int8_symmetric"])
    compressed.attach(net.conv1, "input.0", act(scale=0.03))
    compressed.attach(net.conv1, "output.0", act("uint8", "asymmetric", scale=0.02, zero_point=100))
    compressed.attach(net.conv2, "output.0", act("int8", "asymmetric", scale=0.01, zero_point=-20))
    compressed.attach(net.fc, "input.0", act("int4", "symmetric", scale=0.1))  # no torch qint4: fake quant
    exported = finalize(net)
    reference = copy.deepcopy(net)
    enable_activation_quant(reference)  # the core's eager fake quantization of the same records
    with torch.no_grad():
        assert torch.equal(exported(inputs), reference(inputs))
        assert not torch.equal(exported(inputs), net(inputs))
    kinds = {type(r).__name__ for *_, r in compressed.iter_records(exported)}
    assert kinds == {"PalettizedTensor", "ActivationQuant"}  # records stay attached
    assert exported.conv1._forward_pre_hooks and exported.conv1._forward_hooks and not exported.fc._forward_hooks


def test_quantize_dequantize_matches_fake_quantize_up_to_rare_rounding_ties():
    # torch's quantize_per_tensor computes x * (1/scale) + zero_point in one fused step; the core's
    # fake_quantize rounds x / scale. They agree except where the two roundings straddle a .5 tie.
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)) * 3
    for record in (act(scale=0.0237), act("int8", "asymmetric", scale=0.0237, zero_point=5),
                   act("uint8", "asymmetric", scale=0.031, zero_point=128)):
        a, b = QDQ(record)(x), record.fake_quantize(x)
        differ = a != b
        assert int(differ.sum()) <= 20  # < 2e-5 of the values
        assert torch.allclose((a - b)[differ].abs(), record.scale.expand(int(differ.sum())))


def test_finalize_twice_changes_nothing(net, inputs):
    palettize(net.conv1, "weight", SPECS["vector_axis0"])
    compressed.attach(net.fc, "output.0", act(scale=0.05))
    once = finalize(net)
    twice = BACKEND.finalize(copy.deepcopy(once))
    with torch.no_grad():
        assert torch.equal(once(inputs), twice(inputs))
    assert list(once.state_dict()) == list(twice.state_dict())
    assert len(twice.fc._forward_hooks) == 1


def test_deepcopy_save_load_and_state_dict(net, inputs):
    palettize(net.conv1, "weight", SPECS["grouped_axis1_vector"])
    compressed.apply(net.fc, "weight", int8_record(net.fc.weight))
    compressed.attach(net.conv2, "output.0", act(scale=0.05))
    exported = finalize(net)
    with torch.no_grad():
        expected = exported(inputs)
        buffer = io.BytesIO()
        torch.save(exported, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert torch.equal(loaded(inputs), expected)
        assert torch.equal(copy.deepcopy(exported)(inputs), expected)
        fresh = finalize(net)
        for b in fresh.buffers():
            b.zero_() if b.is_floating_point() else None
        fresh.load_state_dict(exported.state_dict())
        assert torch.equal(fresh(inputs), expected)


def test_sizes_are_the_same_as_the_prepared_model(net):
    palettize(net.conv1, "weight", SPECS["everything"])
    palettize(net.conv2, "weight", SPECS["per_tensor_4bit"])
    compressed.apply(net.fc, "weight", int8_record(net.fc.weight))
    assert model_size(finalize(net)) == model_size(net)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens):
        return self.head(self.emb(tokens))


def test_tied_weights_share_their_buffers():
    torch.manual_seed(0)
    model = Tied()
    record = palettize(model.emb, "weight", SPECS["per_tensor_4bit"])
    compressed.attach(model.head, "weight", record)
    tokens = torch.randint(0, 16, (2, 5))
    exported = finalize(model)
    assert exported.emb.weight_lut is exported.head.weight_lut
    assert exported.emb.weight_indices is exported.head.weight_indices
    with torch.no_grad():
        assert torch.equal(exported(tokens), model(tokens))
    assert model_size(exported).compressed == model_size(model).compressed


def test_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    palettize(mha, "in_proj_weight", SPECS["per_tensor_4bit"])
    palettize(mha.out_proj, "weight", SPECS["grouped_axis0_2bit"])
    x = torch.randn(2, 5, 16)
    exported = finalize(mha)
    assert "in_proj_weight_indices" in dict(exported.named_buffers())
    with torch.no_grad():
        assert torch.equal(exported(x, x, x)[0], mha(x, x, x)[0])


def test_a_record_without_its_tensor_is_an_error_naming_it(net):
    rec = palettize(net.conv1, "weight", SPECS["per_tensor_4bit"])
    compressed.attach(net.conv1, "kernel", rec)
    with pytest.raises(CompressionError, match=r"^conv1\.kernel: has a PalettizedTensor record but no parameter"):
        finalize(net)


def test_half_after_finalize(net, inputs):
    palettize(net.conv1, "weight", SPECS["per_channel_scale_8bit"])
    exported = finalize(net).half()
    assert exported.conv1.weight.dtype == torch.float16
    with torch.no_grad():
        assert torch.allclose(exported(inputs.half()).float(), net(inputs), atol=0.05)


def test_protocol_contract_and_registration(registry, net, inputs):
    check_export_backend(BACKEND)
    assert isinstance(registry.get("export_backend", "coreai"), CoreAIBackend)
    palettize(net.conv1, "weight", SPECS["per_tensor_4bit"])
    exported = bitsmith.finalize(net, bitsmith.ExportBackend.CoreAI, registry=registry)
    assert exported is not net and "weight" in dict(net.conv1.named_parameters())
    with torch.no_grad():
        assert torch.equal(exported(inputs), net(inputs))
    assert bitsmith.plugins.default_registry().provider("export_backend", "coreai").dist == "bitsmith-export-coreai"


def test_plain_modules_without_records_are_left_alone(inputs):
    torch.manual_seed(0)
    model = Net()
    exported = finalize(model)
    assert type(exported.conv1) is nn.Conv2d
    with torch.no_grad():
        assert torch.equal(exported(inputs), model(inputs))
