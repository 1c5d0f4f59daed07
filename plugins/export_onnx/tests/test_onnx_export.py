"""ONNX export: onnxruntime parity with eager PyTorch, compressed storage in the graph, file sizes."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch

import bitsmith
from bitsmith import compressed, sizes
from bitsmith.compressed import ActivationQuant, SparseOutliers
from bitsmith.config import (
    PalettizationSpec,
    PerBlockGranularity,
    PerChannelGranularity,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
    QuantizationSpec,
)
from bitsmith.palettization import palettize_tensor
from bitsmith_export_onnx import OnnxBackend

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

BACKEND = OnnxBackend()
RTOL = 1e-5
"""Parity tolerance for weight-only compression: |ort - torch| <= RTOL * max|torch| (float summation order)."""


# ORT_ENABLE_BASIC: constant folding, no QDQ -> QLinearConv fusion. The fused int8 kernels on
# AVX2 CPUs without VNNI saturate int16 intermediate sums (onnxruntime's documented u8s8/s8s8
# caveat): on such a machine they differ from the graph's own semantics by tens of steps, and
# the tests check the graph bitsmith writes, not that kernel.
def run_ort(proto, x):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def export(model, x):
    return BACKEND.to_onnx(model, (x,))


def fp32_export_bytes(model, x) -> int:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17)
    return len(buffer.getvalue())


def assert_parity(model, proto, x, rtol=RTOL):
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_ort(proto, x)
    err = np.abs(got - expected).max()
    assert err <= rtol * np.abs(expected).max(), f"max |ort - torch| = {err}"
    return err


def palettize(model, spec, clusterer, layers=("conv1", "conv2", "fc")):
    for name in layers:
        module = model.get_submodule(name)
        use = spec
        if name == "conv1" and isinstance(spec.granularity, PerGroupedChannelGranularity) and spec.granularity.axis == 1:
            use = PalettizationSpec(n_bits=spec.n_bits)
        compressed.apply(module, "weight", palettize_tensor(module.weight, use, clusterer, name=name))


def initializers(proto):
    return {i.name: i for i in proto.graph.initializer}


GRANULARITIES = {
    "per_tensor": PerTensorGranularity(),
    "grouped_axis0": PerGroupedChannelGranularity(axis=0, group_size=4),
    "grouped_axis1": PerGroupedChannelGranularity(axis=1, group_size=8),
}


@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
@pytest.mark.parametrize("n_bits", [1, 2, 3, 4, 6, 8])
def test_palettized_parity_every_n_bits(net, inputs, clusterer, n_bits, granularity):
    palettize(net, PalettizationSpec(n_bits=n_bits, granularity=GRANULARITIES[granularity]), clusterer)
    proto = export(net, inputs)
    assert_parity(net, proto, inputs)
    inits = initializers(proto)
    assert "conv2.weight" not in inits and "fc.weight" not in inits, "dense weights are not stored"
    packed = inits["fc.weight.indices"]
    n = net.fc.weight.numel()
    assert packed.data_type == onnx.TensorProto.UINT8
    assert math.prod(packed.dims) == (n if n_bits == 8 else math.ceil(n / 8) * n_bits)
    assert "Gather" in {node.op_type for node in proto.graph.node}


@pytest.mark.parametrize("spec", [
    PalettizationSpec(n_bits=4, cluster_dim=2),
    PalettizationSpec(n_bits=3, cluster_dim=4, granularity=PerGroupedChannelGranularity(group_size=8)),
    PalettizationSpec(n_bits=2, cluster_dim=2, granularity=PerGroupedChannelGranularity(axis=1, group_size=8)),
    PalettizationSpec(n_bits=4, enable_per_channel_scale=True),
    PalettizationSpec(n_bits=6, lut_qspec=QuantizationSpec(dtype="int8")),
    PalettizationSpec(n_bits=4, lut_qspec=QuantizationSpec(dtype="uint8", qscheme="asymmetric"),
                      granularity=PerGroupedChannelGranularity(group_size=4)),
    PalettizationSpec(n_bits=4, lut_qspec=QuantizationSpec(dtype="float8_e4m3fn"), enable_per_channel_scale=True),
], ids=lambda s: s.describe().replace(" ", "_"))
def test_vectors_scales_and_quantized_luts(net, inputs, clusterer, spec):
    palettize(net, spec, clusterer, layers=("conv2", "fc"))
    proto = export(net, inputs)
    assert_parity(net, proto, inputs)
    if spec.lut_qspec is not None:
        inits = initializers(proto)
        assert "fc.weight.lut" not in inits and "fc.weight.lut_q" in inits
        assert "DequantizeLinear" in {n.op_type for n in proto.graph.node}


def test_sparse_outliers(net, inputs, clusterer):
    import attrs

    palettize(net, PalettizationSpec(n_bits=2), clusterer, layers=("conv2",))
    record = compressed.records(net.conv2)["weight"]
    outliers = SparseOutliers(indices=torch.tensor([3, 99, 4000]), values=torch.tensor([1.5, -2.0, 0.75]))
    compressed.apply(net.conv2, "weight", attrs.evolve(record, outliers=outliers))
    proto = export(net, inputs)
    assert "ScatterElements" in {n.op_type for n in proto.graph.node}
    assert_parity(net, proto, inputs)


@pytest.mark.parametrize("spec", [
    QuantizationSpec(dtype="int8", granularity=PerChannelGranularity(axis=0)),
    QuantizationSpec(dtype="int8", qscheme="asymmetric"),
    QuantizationSpec(dtype="uint8", qscheme="asymmetric", granularity=PerChannelGranularity(axis=0)),
    QuantizationSpec(dtype="int8", granularity=PerBlockGranularity(axis=1, block_size=8)),
    QuantizationSpec(dtype="int4", granularity=PerChannelGranularity(axis=0)),
    QuantizationSpec(dtype="uint4", qscheme="asymmetric", granularity=PerBlockGranularity(axis=1, block_size=16)),
], ids=lambda s: f"{s.dtype_name}-{s.qscheme.value}-{type(s.granularity).__name__}")
def test_quantized_weights_use_dequantize_linear(net, inputs, quantize, spec):
    for name in ("conv2", "fc"):
        quantize(net, name, spec)
    proto = export(net, inputs)
    assert_parity(net, proto, inputs)
    inits = initializers(proto)
    expected_type = {"int8": onnx.TensorProto.INT8, "uint8": onnx.TensorProto.UINT8, "int4": onnx.TensorProto.INT4,
                     "uint4": onnx.TensorProto.UINT4}[spec.dtype_name]
    assert inits["fc.weight.q"].data_type == expected_type
    if spec.n_bits == 4:
        assert len(inits["fc.weight.q"].raw_data) == net.fc.weight.numel() // 2
    needs_21 = spec.n_bits == 4 or isinstance(spec.granularity, PerBlockGranularity)
    assert proto.opset_import[0].version == (21 if needs_21 else 17)


def test_activation_records_become_qdq(net, inputs, clusterer):
    palettize(net, PalettizationSpec(n_bits=4), clusterer)
    spec = QuantizationSpec(dtype="int8", qscheme="asymmetric")
    compressed.attach(net.conv2, "input.0", ActivationQuant(scale=torch.tensor(0.02), zero_point=torch.tensor(-5),
                                                            spec=spec))
    compressed.attach(net.fc, "output.0", ActivationQuant(scale=torch.tensor(0.01), zero_point=None,
                                                          spec=QuantizationSpec(dtype="uint8")))
    finalized = BACKEND.finalize(net)
    with torch.no_grad():
        out = finalized(inputs)
    assert torch.equal(torch.round(out / 0.01) * 0.01, out)
    proto = export(finalized, inputs)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2
    # one QDQ step of the output activation is the worst case (rounding at a .5 boundary)
    err = np.abs(run_ort(proto, inputs) - out.numpy()).max()
    assert err <= 0.01 + 1e-6


def test_file_is_smaller_than_fp32_by_the_accounted_factor(tmp_path, net, inputs, clusterer):
    fp32_bytes = fp32_export_bytes(net, inputs)
    dense = sizes.model_size(net).total.bytes
    palettize(net, PalettizationSpec(n_bits=2), clusterer)
    path = BACKEND.save(net, tmp_path / "m.onnx", example_inputs=inputs)
    accounted = sizes.model_size(net).total.bytes
    graph_overhead = fp32_bytes - dense  # protobuf + node bytes of the plain export
    got = path.stat().st_size
    # the compressed file: accounted bytes + the plain graph + at most 1.5 KB of unpacking ops per weight
    assert got <= accounted + graph_overhead + 3 * 1500
    assert fp32_bytes / got > 0.8 * dense / (accounted + graph_overhead + 3 * 1500)


def test_contract_and_missing_inputs(net, inputs, clusterer):
    bitsmith.testing.check_export_backend(BACKEND)
    palettize(net, PalettizationSpec(n_bits=4), clusterer)
    with pytest.raises(ValueError, match="example_inputs"):
        BACKEND.save(net, "unused.onnx")


def test_registered_and_finalize_through_core(net, inputs, clusterer):
    assert "onnx" in bitsmith.plugins.default_registry().names("export_backend")
    palettize(net, PalettizationSpec(n_bits=4), clusterer)
    finalized = bitsmith.finalize(net, "onnx")
    with torch.no_grad():
        assert torch.equal(finalized(inputs), net(inputs))


def test_int8_quantizer_w8a8(net, inputs):
    if "int8" not in bitsmith.plugins.default_registry().names("quantizer"):
        pytest.skip("quantizer 'int8' (bitsmith-int8-quant) is not installed")
    from bitsmith.quantization import Quantizer, QuantizerConfig

    quantizer = Quantizer(net, QuantizerConfig())
    prepared = quantizer.prepare(inputs)
    with quantizer.calibration_mode(), torch.no_grad():
        for seed in range(3):
            prepared(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        reference = prepared(inputs)
    exported = quantizer.finalize(backend="onnx")
    proto = BACKEND.to_onnx(exported, (inputs,))
    ops = [n.op_type for n in proto.graph.node]
    n_act = sum(1 for *_, r in compressed.iter_records(exported) if isinstance(r, ActivationQuant))
    assert ops.count("QuantizeLinear") == n_act > 0
    assert ops.count("DequantizeLinear") == n_act + 3  # activations + 3 weights
    got = run_ort(proto, inputs)
    out_step = max(float(r.scale) for _, m, n, r in compressed.iter_records(exported)
                   if isinstance(r, ActivationQuant) and m is exported.fc)
    assert np.abs(got - reference.numpy()).max() <= out_step + 1e-6


def test_save_is_atomic_and_refuses_to_replace(tmp_path, net, inputs, clusterer, monkeypatch):
    import onnx as onnx_module

    from bitsmith.atomic import OverwriteError

    palettize(net, PalettizationSpec(n_bits=4), clusterer)
    path = BACKEND.save(net, tmp_path / "m.onnx", example_inputs=inputs)
    before = path.read_bytes()
    with pytest.raises(OverwriteError, match="overwrite=True"):
        BACKEND.save(net, path, example_inputs=inputs)

    def broken(proto, target, *args, **kwargs):
        with open(target, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx_module, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        BACKEND.save(net, path, example_inputs=inputs, overwrite=True)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
