"""Seed 002's joint flow (palettize, ``finalize(CoreAI)``, quantize activations) exported with every backend.

Each backend either exports the model so that it computes what the prepared model computes,
with the weights still compressed, or refuses naming the layer; none silently densifies.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import bitsmith as opt
from bitsmith import compressed, sizes

registry = opt.plugins.default_registry()
for _kind, _name in (("palettizer", "kmeans"), ("quantizer", "int8")):
    if _name not in registry.names(_kind):
        pytest.skip(f"{_kind} {_name!r} is not installed", allow_module_level=True)


class EDSRBlock(nn.Module):
    """A tiny super-resolution-style net: head conv, a residual block, tail conv."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 16, 3, padding=1)
        self.body1 = nn.Conv2d(16, 16, 3, padding=1)
        self.body2 = nn.Conv2d(16, 16, 3, padding=1)
        self.tail = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return self.tail(h + self.body2(torch.relu(self.body1(h))))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return EDSRBlock().eval()


EXAMPLE = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
CALIBRATION = [torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(10 + i)) for i in range(4)]
HELD_OUT = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(99))


@pytest.fixture(scope="module")
def joint():
    """The seed's two steps, verbatim but for the package name; returns (quantizer, prepared model)."""
    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig, ModuleKMeansPalettizerConfig
    from bitsmith.palettization.spec import PalettizationSpec
    from bitsmith.quantization import ModuleQuantizerConfig, Quantizer, QuantizerConfig
    from bitsmith.quantization.spec import QuantizationScheme, QuantizationSpec

    palett_spec = PalettizationSpec(n_bits=4, lut_qspec=QuantizationSpec(dtype=torch.int8,
                                                                        qscheme=QuantizationScheme.SYMMETRIC))
    palett_config = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": palett_spec}))
    act_spec = QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC)
    quant_config = QuantizerConfig(global_config=ModuleQuantizerConfig(
        op_state_spec=None, op_input_spec={"*": act_spec}, op_output_spec={"*": act_spec}))
    palettizer = KMeansPalettizer(make_model(), palett_config)
    palettizer.prepare(EXAMPLE)
    palettized = palettizer.finalize(backend=opt.ExportBackend.CoreAI)
    quantizer = Quantizer(palettized, quant_config)
    prepared = quantizer.prepare(EXAMPLE)
    with quantizer.calibration_mode(), torch.no_grad():
        for image in CALIBRATION:
            prepared(image)
    return quantizer, prepared


def _finalize(joint, backend):
    if backend not in registry.names("export_backend"):
        pytest.skip(f"export backend {backend!r} is not installed")
    quantizer, prepared = joint
    with torch.no_grad():
        reference = prepared(HELD_OUT)
    exported = quantizer.finalize(backend=backend)
    return exported, reference


def _palettized(model) -> int:
    return sum(isinstance(r, compressed.PalettizedTensor) for *_, r in compressed.iter_records(model))


def test_coreai(joint):
    exported, reference = _finalize(joint, "coreai")
    with torch.no_grad():
        assert torch.equal(exported(HELD_OUT), reference)
    assert _palettized(exported) == 4
    assert "weight_indices" in dict(exported.head.named_buffers()) and "weight" not in dict(
        exported.head.named_parameters())


def test_torch(joint):
    exported, reference = _finalize(joint, "torch")
    with torch.no_grad():
        assert torch.equal(exported(HELD_OUT), reference)
    assert not compressed.is_compressed(exported), "the torch backend drops records"
    assert type(exported.head) is nn.Conv2d and isinstance(exported.head.weight, nn.Parameter)
    assert not any("lut" in name or "indices" in name for name, _ in exported.named_buffers())


def test_safetensors(joint, tmp_path):
    from bitsmith_export_safetensors import header_nbytes, read_tensors

    exported, reference = _finalize(joint, "safetensors")
    with torch.no_grad():
        assert torch.equal(exported(HELD_OUT), reference)
    path = opt.plugins.get("export_backend", "safetensors").save(exported, tmp_path / "joint.safetensors")
    payload = path.stat().st_size - header_nbytes(path)
    accounted = sizes.model_size(exported).total.bytes
    assert abs(payload - accounted) <= 0.01 * accounted, (payload, accounted)
    stored = read_tensors(path)
    assert "head.weight.indices" in stored and "head.weight_indices" not in stored, "Core AI buffers not stored twice"
    assert stored["head.weight.lut_int"].dtype == torch.int8
    loaded = opt.load(path, make_model)
    with torch.no_grad():
        assert torch.equal(loaded(HELD_OUT), reference)
    assert _palettized(loaded) == 4


def test_onnx(joint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    exported, reference = _finalize(joint, "onnx")
    with torch.no_grad():
        assert torch.equal(exported(HELD_OUT), reference)
    path = opt.plugins.get("export_backend", "onnx").save(exported, tmp_path / "joint.onnx", example_inputs=EXAMPLE,
                                                            dynamic_batch=True)
    proto = onnx.load(str(path))
    names = {i.name for i in proto.graph.initializer}
    assert {f"{m}.weight.indices" for m in ("head", "body1", "body2", "tail")} <= names
    assert not any(i.name.endswith("weight") and i.data_type == onnx.TensorProto.FLOAT for i in proto.graph.initializer)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 8, "activations are quantized in the graph"
    luts = [i for i in proto.graph.initializer if i.name.endswith(".lut_q")]
    assert len(luts) == 4 and all(i.data_type == onnx.TensorProto.INT8 for i in luts), "int8 LUTs stay int8"
    options = ort.SessionOptions()  # the graph's semantics, not onnxruntime's fused int8 kernels (see export_onnx)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input_0": HELD_OUT.numpy()})[0])
    assert torch.allclose(got, reference, atol=1e-5), (got - reference).abs().max()


def test_coreml(joint, tmp_path):
    pytest.importorskip("coremltools")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    exported, reference = _finalize(joint, "coreml")
    with torch.no_grad():
        assert torch.equal(exported(HELD_OUT), reference)
    from bitsmith_export_coreml.backend import CoreMLSkipWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mlmodel = opt.plugins.get("export_backend", "coreml").convert(exported, EXAMPLE)
    assert not [w for w in caught if issubclass(w.category, CoreMLSkipWarning)]
    ops = [op.op_type for f in mlmodel._mil_program.functions.values() for op in f.operations]
    assert ops.count("constexpr_lut_to_dense") == 4, "every palettized weight stays a LUT (no silent dense copy)"
    assert ops.count("quantize") >= 4 and ops.count("dequantize") >= 4


def test_restore_dense_undoes_a_conversion_and_names_a_tensor_without_record():
    from bitsmith.export import converted_tensors, restore_dense

    if "coreai" not in registry.names("export_backend"):
        pytest.skip("export backend 'coreai' is not installed")
    from bitsmith.config import PalettizationSpec
    from bitsmith.palettization import palettize_tensor

    model = make_model()
    clusterer = registry.get("cluster", "kmeans") if "kmeans" in registry.names("cluster") else None
    if clusterer is None:
        pytest.skip("cluster 'kmeans' is not installed")
    compressed.apply(model.head, "weight", palettize_tensor(model.head.weight, PalettizationSpec(n_bits=2), clusterer))
    with torch.no_grad():
        reference = model(HELD_OUT)
    converted = opt.finalize(model, "coreai")
    assert converted_tensors(converted) == ["head.weight"]
    assert restore_dense(converted) == 1 and converted_tensors(converted) == []
    assert type(converted.head) is nn.Conv2d and "weight_indices" not in dict(converted.head.named_buffers())
    with torch.no_grad():
        assert torch.equal(converted(HELD_OUT), reference)
    again = opt.finalize(model, "coreai")
    compressed.detach(again.head, "weight")
    with pytest.raises(opt.CompressionError, match=r"head\.weight: was converted by an export backend but carries no"):
        restore_dense(again)
