"""The "torch" backend: plain dense modules, records dropped, fake-quant activations, bit-identical outputs."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from bitsmith.testing.backend_models import SPECS, act, int8_record, palettize

import bitsmith
from bitsmith import compressed
from bitsmith.errors import CompressionError
from bitsmith.loading import enable_activation_quant
from bitsmith.testing import check_export_backend
from bitsmith_export_torch.backend import TorchBackend

BACKEND = TorchBackend()


def finalize(model):
    return BACKEND.finalize(copy.deepcopy(model))


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_palettized_models_become_plain_and_bit_identical(kind, net, inputs):
    palettize(net.conv1, "weight", SPECS[kind])
    palettize(net.fc, "weight", SPECS[kind], outliers=4 if kind == "everything" else 0)
    exported = finalize(net)
    with torch.no_grad():
        assert torch.equal(exported(inputs), net(inputs))
    assert not compressed.is_compressed(exported)
    assert type(exported.conv1) is nn.Conv2d and isinstance(exported.conv1.weight, nn.Parameter)
    assert list(exported.state_dict()) == [k for k in net.state_dict() if "_bitsmith_" not in k]  # records dropped
    assert torch.equal(exported.fc.weight, compressed.records(net.fc)["weight"].dequantize())


@pytest.mark.parametrize("per_block", [False, True])
def test_int8_weights_become_dense(per_block, net, inputs):
    compressed.apply(net.fc, "weight", int8_record(net.fc.weight, per_block))
    exported = finalize(net)
    assert exported.fc.weight.dtype == torch.float32 and not compressed.is_compressed(exported)
    with torch.no_grad():
        assert torch.equal(exported(inputs), net(inputs))


def test_dense_values_are_rewritten_from_the_records(net, inputs):
    record = palettize(net.conv1, "weight", SPECS["per_tensor_4bit"])
    with torch.no_grad():
        net.conv1.weight.add_(1.0)  # drifted parameter: the record is the truth
    exported = finalize(net)
    assert torch.equal(exported.conv1.weight, record.dequantize())


def test_activation_records_become_fake_quant_hooks(net, inputs):
    palettize(net.conv2, "weight", SPECS["lut_int8_symmetric"])
    compressed.attach(net.conv1, "input.0", act(scale=0.03))
    compressed.attach(net.conv2, "output.0", act("uint8", "asymmetric", scale=0.02, zero_point=90))
    exported = finalize(net)
    reference = copy.deepcopy(net)
    enable_activation_quant(reference)
    with torch.no_grad():
        assert torch.equal(exported(inputs), reference(inputs))
        assert not torch.equal(exported(inputs), net(inputs))
    assert not compressed.is_compressed(exported)
    buffer = io.BytesIO()
    torch.save(exported, buffer)  # hooks pickle
    buffer.seek(0)
    with torch.no_grad():
        assert torch.equal(torch.load(buffer, weights_only=False)(inputs), reference(inputs))
    twice = BACKEND.finalize(copy.deepcopy(exported))  # nothing left to do, hooks kept once
    assert len(twice.conv2._forward_hooks) == 1


def test_tied_weights_stay_tied(inputs):
    torch.manual_seed(0)
    emb, head = nn.Embedding(16, 8), nn.Linear(8, 16, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    record = palettize(emb, "weight", SPECS["per_tensor_4bit"])
    compressed.attach(head, "weight", record)
    exported = finalize(model)
    assert exported[0].weight is exported[1].weight
    assert torch.equal(exported[1].weight, record.dequantize())


def test_a_model_already_finalized_elsewhere_is_refused(net):
    record = palettize(net.conv1, "weight", SPECS["per_tensor_4bit"])
    del net.conv1._parameters["weight"]  # what a buffer-based backend leaves behind
    net.conv1.register_buffer("weight_indices", record.indices)
    with pytest.raises(CompressionError, match=r"^conv1\.weight: has a PalettizedTensor record but no parameter"):
        finalize(net)


def test_protocol_contract_and_registration(registry, net, inputs):
    check_export_backend(BACKEND)
    palettize(net.conv1, "weight", SPECS["vector_axis0"])
    exported = bitsmith.finalize(net, "torch", registry=registry)
    assert compressed.is_compressed(net) and not compressed.is_compressed(exported)
    with torch.no_grad():
        assert torch.equal(exported(inputs), net(inputs))
    assert bitsmith.plugins.default_registry().provider("export_backend", "torch").dist == "bitsmith-export-torch"
