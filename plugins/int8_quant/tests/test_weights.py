"""Weight quantization: axis handling per layer type, per-block, int4, sizes, layer errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bitsmith import compressed
from bitsmith.config import ModuleQuantizerConfig, QuantizationSpec, QuantizerConfig
from bitsmith.errors import CompressionError
from bitsmith.quantization import PerBlockGranularity, PerChannelGranularity, PerTensorGranularity
from bitsmith.sizes import model_size, quantized_size, record_size
from bitsmith_int8_quant import Quantizer
from bitsmith_int8_quant.observers import MinMaxObserver
from bitsmith_int8_quant.weights import quantize_weight, tensor_axis, tensor_spec


def weights_only(spec: QuantizationSpec) -> QuantizerConfig:
    return QuantizerConfig(global_config=ModuleQuantizerConfig(op_state_spec={"weight": spec},
                                                               op_input_spec=None, op_output_spec=None))


def per_channel(axis: int = 0, dtype: str = "int8") -> QuantizationSpec:
    return QuantizationSpec(dtype=dtype, qscheme="symmetric", granularity=PerChannelGranularity(axis=axis),
                            observer="min_max")


def channel_amax(weight: torch.Tensor, dim: int) -> torch.Tensor:
    return weight.detach().abs().movedim(dim, 0).reshape(weight.shape[dim], -1).amax(1)


@pytest.mark.parametrize("layer, spec_axis, dim", [
    (nn.Conv2d(6, 4, 3), 0, 0),
    (nn.Conv2d(6, 4, 3), 1, 1),
    (nn.Linear(6, 4), 0, 0),
    (nn.Linear(6, 4), 1, 1),
    (nn.Conv1d(6, 4, 3), 0, 0),
    (nn.ConvTranspose2d(6, 4, 3), 0, 1),  # weight (in=6, out=4, 3, 3): output channels on dim 1
    (nn.ConvTranspose2d(6, 4, 3), 1, 0),
    (nn.ConvTranspose1d(6, 4, 3), 0, 1),
    (nn.ConvTranspose3d(6, 4, 1), 0, 1),
])
def test_per_channel_scale_runs_along_the_right_dim(layer, spec_axis, dim, registry):
    torch.manual_seed(0)
    model = nn.Sequential(layer)
    original = layer.weight.detach().clone()
    quantizer = Quantizer(model, weights_only(per_channel(spec_axis)), registry=registry)
    prepared = quantizer.prepare()
    record = quantizer.weights["0.weight"]
    expected_shape = [1] * original.dim()
    expected_shape[dim] = original.shape[dim]
    assert list(record.scale.shape) == expected_shape
    assert record.spec.granularity.axis == dim  # the record carries the tensor dim
    assert torch.allclose(record.scale.reshape(-1), channel_amax(original, dim) / 127)
    dense = prepared[0].weight.detach()
    assert torch.equal(dense, record.dequantize())
    assert ((dense - original).abs() <= record.expanded(record.scale) / 2 + 1e-7).all()
    assert compressed.records(prepared[0])["weight"] is record
    assert torch.equal(model[0].weight, original)  # the input model is untouched


def test_tensor_axis_mapping():
    assert tensor_axis(nn.ConvTranspose2d(2, 3, 1), 0) == 1
    assert tensor_axis(nn.ConvTranspose2d(2, 3, 1), 1) == 0
    assert tensor_axis(nn.Conv2d(2, 3, 1), 0) == 0
    spec = tensor_spec(nn.ConvTranspose2d(2, 3, 1), per_channel(0))
    assert spec.granularity == PerChannelGranularity(axis=1)


def test_grouped_conv_transpose_scales_per_output_channel_within_group(registry):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight (4, 3, 3, 3)
    quantizer = Quantizer(nn.Sequential(layer), weights_only(per_channel(0)), registry=registry)
    quantizer.prepare()
    assert tuple(quantizer.weights["0.weight"].scale.shape) == (1, 3, 1, 1)


def test_per_tensor_and_asymmetric_zero_points(registry):
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    spec = QuantizationSpec(dtype="uint8", qscheme="asymmetric", granularity=PerTensorGranularity(), observer="min_max")
    quantizer = Quantizer(nn.Sequential(layer), weights_only(spec), registry=registry)
    quantizer.prepare()
    record = quantizer.weights["0.weight"]
    w = layer.weight.detach()
    assert record.scale.shape == (1, 1) and record.zero_point.dtype == torch.uint8
    assert record.scale.item() == pytest.approx((w.max() - w.min()).item() / 255)
    assert ((record.dequantize() - w).abs() <= record.scale / 2 + 1e-7).all()


def test_per_block_along_input_channels():
    torch.manual_seed(0)
    weight = torch.randn(4, 64)
    spec = QuantizationSpec(dtype="int8", granularity=PerBlockGranularity(axis=1, block_size=16), observer="min_max")
    record = quantize_weight(weight, spec, MinMaxObserver)
    assert tuple(record.scale.shape) == (4, 4)
    expected = weight.reshape(4, 4, 16).abs().amax(-1) / 127
    assert torch.allclose(record.scale, expected)
    assert ((record.dequantize() - weight).abs() <= record.expanded(record.scale) / 2 + 1e-7).all()
    assert record_size(record) == quantized_size((4, 64), spec)  # 256 bytes + 16 fp32 scales


def test_per_block_on_conv_keeps_kernel_positions():
    weight = torch.randn(8, 32, 3, 3)
    spec = QuantizationSpec(dtype="int8", granularity=PerBlockGranularity(axis=1, block_size=8), observer="min_max")
    record = quantize_weight(weight, spec, MinMaxObserver)
    assert tuple(record.scale.shape) == (8, 4, 3, 3)
    assert record_size(record) == quantized_size(tuple(weight.shape), spec)


def test_per_block_that_does_not_divide_names_the_layer(registry):
    model = nn.Sequential(nn.Linear(24, 4))
    spec = QuantizationSpec(dtype="int8", granularity=PerBlockGranularity(axis=1, block_size=16), observer="min_max")
    before = model[0].weight.detach().clone()
    with pytest.raises(CompressionError, match=r"0\.weight: 24 elements along axis 1 are not divisible by "
                                               r"block_size 16; block sizes that divide it: 1, 2, 3, 4, 6, 8, 12, 24"):
        Quantizer(model, weights_only(spec), registry=registry).prepare()
    assert torch.equal(model[0].weight, before)


def test_missing_axis_fails_before_any_layer_is_touched(registry):
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    config = weights_only(per_channel(0))
    config.set_module_name("1", ModuleQuantizerConfig(op_state_spec={"weight": per_channel(1)},
                                                      op_input_spec=None, op_output_spec=None))
    quantizer = Quantizer(model, config, registry=registry)
    with pytest.raises(CompressionError, match=r"^1\.weight: a 1-D tensor \(4,\) has no axis 1"):
        quantizer.prepare(inplace=True)
    assert not compressed.is_compressed(model)


def test_int4_weights(registry):
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 16, 3)
    quantizer = Quantizer(nn.Sequential(layer), weights_only(per_channel(0, "int4")), registry=registry)
    prepared = quantizer.prepare()
    record = quantizer.weights["0.weight"]
    assert record.int_data.dtype == torch.int8
    assert int(record.int_data.min()) >= -7 and int(record.int_data.max()) == 7
    assert torch.allclose(record.scale.reshape(-1), channel_amax(layer.weight, 0) / 7)
    size = model_size(prepared).compressed
    assert size.payload_bits == layer.weight.numel() * 4
    assert size.overhead_bits == 16 * 32


def test_int8_sizes_are_one_byte_per_weight_plus_scales(registry, small_net):
    quantizer = Quantizer(small_net, weights_only(per_channel(0)), registry=registry)
    prepared = quantizer.prepare()
    sizes = model_size(prepared)
    weights = {"c1": (8, 3, 3, 3), "c2": (8, 8, 3, 3), "up": (8, 4, 2, 2), "fc": (5, 4)}
    n = sum(math.prod(s) for s in weights.values())
    channels = 8 + 8 + 4 + 5  # ConvTranspose2d(8, 4): 4 output channels
    assert sizes.compressed.payload_bits == n * 8
    assert sizes.compressed.overhead_bits == channels * 32
    assert sizes.compressed.bytes == n + channels * 4  # 1 byte per weight + fp32 scales
    biases = 8 + 8 + 4 + 5
    assert sizes.uncompressed.total_bits == biases * 32
    for name, record in quantizer.weights.items():
        assert record_size(record) == quantized_size(record.shape, record.spec), name


def test_tied_weights_are_quantized_once(registry):
    emb = nn.Linear(6, 6, bias=False)
    head = nn.Linear(6, 6, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    quantizer = Quantizer(model, weights_only(per_channel(0)), registry=registry)
    prepared = quantizer.prepare()
    assert list(quantizer.weights) == ["0.weight"]
    assert compressed.records(prepared[1])["weight"] is compressed.records(prepared[0])["weight"]
    assert prepared[0].weight is prepared[1].weight
    assert model_size(prepared).compressed.numel == 36


def test_non_float_parameter_is_rejected(registry):
    class IntParam(nn.Linear):
        pass

    layer = IntParam(2, 2)
    layer.weight = nn.Parameter(torch.ones(2, 2, dtype=torch.int32), requires_grad=False)
    with pytest.raises(CompressionError, match=r"0\.weight: cannot quantize a torch\.int32 tensor"):
        Quantizer(nn.Sequential(layer), weights_only(per_channel(0)), registry=registry).prepare()
