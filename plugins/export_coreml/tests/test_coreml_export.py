"""Core ML conversion smoke tests: the MIL program holds LUT / dequantize ops and the weight file is small.

Prediction needs macOS, so outputs are not compared here; the eager model returned by
``finalize`` is checked against the prepared model instead.
"""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch

import bitsmith
from bitsmith import compressed
from bitsmith.compressed import ActivationQuant, PalettizedTensor, QuantizedTensor
from bitsmith.config import PalettizationSpec, PerChannelGranularity, PerGroupedChannelGranularity, QuantizationSpec
from bitsmith.palettization import palettize_tensor

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install coremltools)")
from bitsmith_export_coreml import CoreMLBackend  # noqa: E402
from bitsmith_export_coreml.backend import CoreMLSkipWarning, weight_file  # noqa: E402

logging.getLogger("coremltools").setLevel(logging.ERROR)
BACKEND = CoreMLBackend()
BLOB_OVERHEAD = 128
"""weight.bin stores each constant as a 64-byte-aligned blob behind a 64-byte header."""


def mil_ops(mlmodel) -> list[str]:
    return [op.op_type for f in mlmodel._mil_program.functions.values() for op in f.operations]


def expected_weight_bytes(model) -> float:
    """Bytes of the compressed weights as Core ML stores them: packed indices, fp16 (or int8) LUTs and scales."""
    total = 0.0
    seen = set()
    for *_, record in compressed.iter_records(model):
        if id(record) in seen or isinstance(record, ActivationQuant):
            continue
        seen.add(id(record))
        n = math.prod(record.shape)
        if isinstance(record, PalettizedTensor):
            g, k, d = record.lut.shape
            int_lut = record.lut_quant is not None and not record.lut_quant.spec.is_float8 and d == 1
            total += math.ceil(n // d * record.n_bits / 8) + g * k * d * (1 if int_lut else 2)
            total += (g * 3 if int_lut else 0) + (record.shape[0] * 2 if record.per_channel_scale is not None else 0)
        elif isinstance(record, QuantizedTensor):
            total += n * record.spec.n_bits / 8 + record.scale.numel() * 3
    return total


def palettize(model, spec, clusterer, layers=("conv1", "conv2", "fc")):
    for name in layers:
        module = model.get_submodule(name)
        compressed.apply(module, "weight", palettize_tensor(module.weight, spec, clusterer, name=name))


@pytest.mark.parametrize("spec", [
    PalettizationSpec(n_bits=4),
    PalettizationSpec(n_bits=2, granularity=PerGroupedChannelGranularity(group_size=4)),
    PalettizationSpec(n_bits=3, enable_per_channel_scale=True),
    PalettizationSpec(n_bits=6, lut_qspec=QuantizationSpec(dtype="int8")),
    PalettizationSpec(n_bits=4, cluster_dim=2),
], ids=lambda s: s.describe().replace(" ", "_"))
def test_palettized_weights_become_lut_ops(tmp_path, net, inputs, clusterer, spec):
    palettize(net, spec, clusterer)
    with torch.no_grad():
        expected = net(inputs)
    finalized = BACKEND.finalize(net)
    with torch.no_grad():
        assert torch.equal(finalized(inputs), expected)
    mlmodel = BACKEND.convert(finalized, (inputs[:1],))
    ops = mil_ops(mlmodel)
    assert ops.count("constexpr_lut_to_dense") == 3
    if spec.lut_qspec is not None or spec.enable_per_channel_scale:
        assert "constexpr_blockwise_shift_scale" in ops
    path = BACKEND.save(finalized, tmp_path / "m.mlpackage", example_inputs=(inputs[:1],))
    size = weight_file(path).stat().st_size
    want = expected_weight_bytes(net)
    assert want <= size <= want + BLOB_OVERHEAD * 12 + 2 * 2000, (size, want)  # + fp16 biases/BN, headers


def test_int8_weights_and_activations(tmp_path, net, inputs, quantize):
    quantize(net, "conv2", QuantizationSpec(dtype="int8", granularity=PerChannelGranularity(axis=0)))
    quantize(net, "fc", QuantizationSpec(dtype="int8", qscheme="asymmetric", granularity=PerChannelGranularity(axis=0)))
    compressed.attach(net.fc, "input.0", ActivationQuant(scale=torch.tensor(0.05), zero_point=torch.tensor(3),
                                                         spec=QuantizationSpec(dtype="int8", qscheme="asymmetric")))
    finalized = BACKEND.finalize(net)
    mlmodel = BACKEND.convert(finalized, (inputs[:1],))
    ops = mil_ops(mlmodel)
    assert ops.count("constexpr_blockwise_shift_scale") == 2
    assert "quantize" in ops and "dequantize" in ops
    path = BACKEND.save(finalized, tmp_path / "q.mlpackage", example_inputs=(inputs[:1],))
    size = weight_file(path).stat().st_size
    want = expected_weight_bytes(net) + net.conv1.weight.numel() * 2  # conv1 stays fp16
    assert want <= size <= want + BLOB_OVERHEAD * 12 + 2 * 2000, (size, want)


def test_smaller_than_dense_conversion(tmp_path, net, inputs, clusterer):
    dense = BACKEND.save(net, tmp_path / "dense.mlpackage", example_inputs=(inputs[:1],))
    palettize(net, PalettizationSpec(n_bits=2), clusterer)
    small = BACKEND.save(net, tmp_path / "small.mlpackage", example_inputs=(inputs[:1],))
    ratio = weight_file(dense).stat().st_size / weight_file(small).stat().st_size
    assert ratio > 4.0, ratio  # fp16 -> 2-bit is 8x on the weights, minus LUTs, biases and blob headers


def test_outliers_are_refused_or_kept_dense_when_asked(net, inputs, clusterer):
    import attrs

    palettize(net, PalettizationSpec(n_bits=2), clusterer, layers=("conv2",))
    record = compressed.records(net.conv2)["weight"]
    outliers = compressed.SparseOutliers(indices=torch.tensor([1, 2]), values=torch.tensor([0.5, 0.25]))
    compressed.apply(net.conv2, "weight", attrs.evolve(record, outliers=outliers))
    with pytest.raises(bitsmith.CompressionError, match=r"conv2\.weight: Core ML has no dense-and-sparse LUT form"):
        BACKEND.finalize(net)
    assert not any(name.startswith("_COREML_") for name, _ in net.named_buffers()), "refused before any change"
    fallback = CoreMLBackend(dense_fallback=True)
    with pytest.warns(CoreMLSkipWarning, match="conv2.weight"):
        finalized = fallback.finalize(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ops = mil_ops(fallback.convert(finalized, (inputs[:1],)))
    assert "constexpr_lut_to_dense" not in ops


def test_registered_and_contract():
    assert "coreml" in bitsmith.plugins.default_registry().names("export_backend")
    bitsmith.testing.check_export_backend(BACKEND)
