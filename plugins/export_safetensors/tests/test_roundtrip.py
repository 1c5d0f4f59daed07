"""Save -> bitsmith.load round trips: bit-identical outputs, identical records, file size = accounting."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import bitsmith
from bitsmith import compressed, sizes
from bitsmith.compressed import ActivationQuant, PalettizedTensor, QuantizedTensor
from bitsmith.config import (
    PalettizationSpec,
    PerBlockGranularity,
    PerChannelGranularity,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
    QuantizationScheme,
    QuantizationSpec,
)
from bitsmith.loading import enable_activation_quant
from bitsmith.palettization import palettize_tensor
from bitsmith_export_safetensors import SafetensorsBackend, plugin
from bitsmith_export_safetensors import FormatError, header_nbytes, read_header, read_tensors

BACKEND = SafetensorsBackend()
GRANULARITIES = {
    "per_tensor": PerTensorGranularity(),
    "grouped_axis0": PerGroupedChannelGranularity(axis=0, group_size=4),
    "grouped_axis1": PerGroupedChannelGranularity(axis=1, group_size=8),
}


def palettize(model, spec, clusterer, layers=("conv1", "conv2", "fc")):
    for name in layers:
        module = model.get_submodule(name)
        use = spec
        if name == "conv1" and isinstance(spec.granularity, PerGroupedChannelGranularity) and spec.granularity.axis == 1:
            use = PalettizationSpec(n_bits=spec.n_bits)  # conv1 has 3 input channels: no axis-1 groups
        compressed.apply(module, "weight", palettize_tensor(module.weight, use, clusterer, name=name))
    return model


def roundtrip(tmp_path, model, factory, inputs):
    """Save ``model``, load it into a fresh factory model; assert bit-identical outputs; return (loaded, path)."""
    path = BACKEND.save(model, tmp_path / "model.safetensors")
    loaded = bitsmith.load(path, factory, backend="safetensors", registry=_registry())
    with torch.no_grad():
        expected, got = model(inputs), loaded(inputs)
    assert torch.equal(got, expected), f"max diff {(got - expected).abs().max().item()}"
    return loaded, path


def _registry():
    return bitsmith.plugins.Registry(autoload=False, plugins=[plugin])


def assert_same_records(a, b):
    ra = {(m, t): r for m, _, t, r in compressed.iter_records(a)}
    rb = {(m, t): r for m, _, t, r in compressed.iter_records(b)}
    assert ra.keys() == rb.keys()
    for key, x in ra.items():
        y = rb[key]
        assert type(x) is type(y) and x.spec == y.spec, key
        if isinstance(x, PalettizedTensor):
            assert torch.equal(x.indices, y.indices) and torch.equal(x.lut, y.lut), key
            assert (x.shape, x.axis, x.dtype) == (y.shape, y.axis, y.dtype), key
            assert (x.per_channel_scale is None) == (y.per_channel_scale is None), key
            if x.per_channel_scale is not None:
                assert torch.equal(x.per_channel_scale, y.per_channel_scale), key
            assert (x.lut_quant is None) == (y.lut_quant is None), key
            if x.lut_quant is not None:
                assert torch.equal(x.lut_quant.int_lut, y.lut_quant.int_lut), key
                assert torch.equal(x.lut_quant.scale, y.lut_quant.scale), key
        elif isinstance(x, QuantizedTensor):
            assert torch.equal(x.int_data, y.int_data) and torch.equal(x.scale, y.scale), key
        else:
            assert torch.equal(x.scale, y.scale), key


def assert_size_matches_accounting(model, path):
    """Bytes after the header equal ``sizes.model_size`` within 1% (header reported separately)."""
    payload = os.path.getsize(path) - header_nbytes(path)
    accounted = sizes.model_size(model).total.bytes
    assert abs(payload - accounted) <= 0.01 * accounted, (payload, accounted)
    return payload, accounted


@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
@pytest.mark.parametrize("n_bits", [1, 2, 3, 4, 6, 8])
def test_every_n_bits_and_granularity(tmp_path, net, factory, inputs, clusterer, n_bits, granularity):
    spec = PalettizationSpec(n_bits=n_bits, granularity=GRANULARITIES[granularity])
    palettize(net, spec, clusterer)
    loaded, path = roundtrip(tmp_path, net, factory, inputs)
    assert_same_records(net, loaded)
    assert_size_matches_accounting(net, path)
    packed = read_tensors(path)["conv2.weight.indices"]
    n = net.conv2.weight.numel()
    assert packed.dtype == torch.uint8
    assert packed.numel() == (n if n_bits == 8 else math.ceil(n / 8) * n_bits)


@pytest.mark.parametrize("spec", [
    PalettizationSpec(n_bits=4, cluster_dim=2),
    PalettizationSpec(n_bits=3, cluster_dim=4, granularity=PerGroupedChannelGranularity(group_size=8)),
    PalettizationSpec(n_bits=2, cluster_dim=2, granularity=PerGroupedChannelGranularity(axis=1, group_size=8)),
    PalettizationSpec(n_bits=4, enable_per_channel_scale=True),
    PalettizationSpec(n_bits=6, lut_qspec=QuantizationSpec(dtype="int8")),
    PalettizationSpec(n_bits=4, lut_qspec=QuantizationSpec(dtype="uint8", qscheme="asymmetric"),
                      granularity=PerGroupedChannelGranularity(group_size=4)),
    PalettizationSpec(n_bits=3, lut_qspec=QuantizationSpec(dtype="uint8")),
    PalettizationSpec(n_bits=4, lut_qspec=QuantizationSpec(dtype="float8_e4m3fn"), enable_per_channel_scale=True),
    PalettizationSpec(n_bits=2, cluster_dim=2, lut_qspec=QuantizationSpec(dtype="int8"),
                      enable_per_channel_scale=True, granularity=PerGroupedChannelGranularity(group_size=8)),
], ids=lambda s: s.describe().replace(" ", "_"))
def test_vectors_scales_and_quantized_luts(tmp_path, net, factory, inputs, clusterer, spec):
    palettize(net, spec, clusterer, layers=("conv2", "fc"))
    loaded, path = roundtrip(tmp_path, net, factory, inputs)
    assert_same_records(net, loaded)
    assert_size_matches_accounting(net, path)
    if spec.lut_qspec is not None:
        stored = read_tensors(path)
        assert "fc.weight.lut" not in stored, "a quantized LUT is stored as integers only"
        assert stored["fc.weight.lut_int"].dtype == getattr(torch, spec.lut_qspec.dtype_name)


@pytest.mark.parametrize("spec", [
    QuantizationSpec(dtype="int8", granularity=PerChannelGranularity(axis=0)),
    QuantizationSpec(dtype="int8", qscheme="asymmetric"),
    QuantizationSpec(dtype="uint8", qscheme="asymmetric", granularity=PerChannelGranularity(axis=0)),
    QuantizationSpec(dtype="int8", granularity=PerBlockGranularity(axis=1, block_size=8)),
    QuantizationSpec(dtype="int4", granularity=PerChannelGranularity(axis=0)),
    QuantizationSpec(dtype="uint4", qscheme="asymmetric", granularity=PerBlockGranularity(axis=1, block_size=16)),
], ids=lambda s: f"{s.dtype_name}-{s.qscheme.value}-{type(s.granularity).__name__}")
def test_quantized_weights(tmp_path, net, factory, inputs, quantize, spec):
    for name in ("conv2", "fc"):
        quantize(net, name, spec)
    loaded, path = roundtrip(tmp_path, net, factory, inputs)
    assert_same_records(net, loaded)
    payload, accounted = assert_size_matches_accounting(net, path)
    data = read_tensors(path)["fc.weight.int_data"]
    if spec.n_bits == 4:  # two values per byte
        assert data.dtype == torch.uint8 and data.numel() == net.fc.weight.numel() // 2


def test_joint_palettized_quantized_and_activations(tmp_path, net, factory, inputs, clusterer, quantize):
    palettize(net, PalettizationSpec(n_bits=4, lut_qspec=QuantizationSpec(dtype="int8")), clusterer,
              layers=("conv1", "conv2"))
    quantize(net, "fc", QuantizationSpec(dtype="int8", granularity=PerChannelGranularity(axis=0)))
    act = QuantizationSpec(dtype="int8", qscheme=QuantizationScheme.ASYMMETRIC)
    for name, scale, zp in (("conv2", 0.02, -3), ("fc", 0.05, 4)):
        compressed.attach(net.get_submodule(name), "input.0",
                          ActivationQuant(scale=torch.tensor(scale), zero_point=torch.tensor(zp), spec=act))
    compressed.attach(net.fc, "output.0", ActivationQuant(scale=torch.tensor(0.1), zero_point=None,
                                                          spec=QuantizationSpec(dtype="int8")))
    assert enable_activation_quant(net) == 2
    loaded, path = roundtrip(tmp_path, net, factory, inputs)
    assert_same_records(net, loaded)
    out = loaded(inputs)
    assert torch.equal(torch.round(out / 0.1) * 0.1, out), "output.0 fake quantization is active after load"
    assert_size_matches_accounting(net, path)


def test_tied_weights_are_stored_once(tmp_path, clusterer):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(32, 16), torch.nn.Linear(16, 32, bias=False))
        model[1].weight = model[0].weight
        return model.eval()

    model = make()
    record = palettize_tensor(model[0].weight, PalettizationSpec(n_bits=2), clusterer)
    compressed.attach(model[1], "weight", record)
    compressed.apply(model[0], "weight", record)
    tokens = torch.tensor([[1, 5, 7, 31]])
    path = BACKEND.save(model, tmp_path / "tied.safetensors")
    loaded = bitsmith.load(path, make, registry=_registry())
    assert torch.equal(loaded(tokens), model(tokens))
    assert loaded[0].weight is loaded[1].weight
    header = read_header(path)
    assert len(header["records"]) == 1 and header["records"][0]["aliases"] == [["1", "weight"]]
    assert_size_matches_accounting(model, path)


def test_header_carries_specs_and_schema_version(tmp_path, net, clusterer):
    spec = PalettizationSpec(n_bits=3, granularity=PerGroupedChannelGranularity(group_size=4))
    palettize(net, spec, clusterer)
    path = BACKEND.save(net, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        names = set(fh.keys())
    assert meta["format"] == "bitsmith-packed" and meta["schema_version"] == "2"
    header = read_header(path)
    assert json.loads(meta["bitsmith"]) == header
    assert header["specs"] == [{"type": "palettization", "spec": bitsmith.config.to_dict(spec)}]
    assert [r["module"] for r in header["records"]] == ["conv1", "conv2", "fc"]
    assert header["records"][1]["parts"] == {"indices": "conv2.weight.indices", "lut": "conv2.weight.lut"}
    assert {"conv2.weight.indices", "conv2.weight.lut", "conv2.bias", "bn1.running_mean"} <= names
    assert "conv2.weight" not in names, "a compressed tensor is stored only as its parts"
    assert set(header["sha256"]) == names
    assert header_nbytes(path) < 300 * len(names), "the header stays small: a few hundred bytes per stored tensor"


def test_finalize_keeps_a_runnable_model(net, clusterer):
    palettize(net, PalettizationSpec(n_bits=2), clusterer)
    assert BACKEND.finalize(net) is net
    bitsmith.testing.check_export_backend(BACKEND)


def test_wrong_architecture_is_named(tmp_path, net, clusterer):
    palettize(net, PalettizationSpec(n_bits=4), clusterer)
    path = BACKEND.save(net, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"not in the model: .*conv1|missing from the file: .*"):
        bitsmith.load(path, lambda: torch.nn.Sequential(torch.nn.Linear(2, 2)), registry=_registry())


def test_newer_schema_and_foreign_files_are_refused(tmp_path, net, clusterer):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(FormatError, match="plain.safetensors: not a bitsmith packed file"):
        read_header(tmp_path / "plain.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "new.safetensors"),
              metadata={"format": "bitsmith-packed", "schema_version": "99", "bitsmith": "{}"})
    with pytest.raises(FormatError, match="schema_version 99 is newer"):
        read_header(tmp_path / "new.safetensors")


def test_load_by_suffix_through_entry_points(tmp_path, net, factory, inputs, clusterer):
    assert "safetensors" in bitsmith.plugins.default_registry().names("export_backend")
    palettize(net, PalettizationSpec(n_bits=4), clusterer)
    backend = bitsmith.plugins.get("export_backend", "safetensors")
    path = backend.save(net, tmp_path / "m.safetensors")
    loaded = bitsmith.load(str(path), factory)
    assert torch.equal(loaded(inputs), net(inputs))
    with pytest.raises(bitsmith.PluginError, match=r"no export backend reads '\.bin'.*\.safetensors \(safetensors\)"):
        (tmp_path / "m.bin").write_bytes(b"x")
        bitsmith.load(tmp_path / "m.bin", factory)


def test_sparse_outliers(tmp_path, net, factory, inputs, clusterer):
    from bitsmith.compressed import SparseOutliers

    palettize(net, PalettizationSpec(n_bits=2), clusterer, layers=("conv2",))
    record = compressed.records(net.conv2)["weight"]
    positions = torch.tensor([0, 17, 400, 4607])
    values = torch.tensor([0.5, -0.25, 1.0, 2.0])
    import attrs

    with_outliers = attrs.evolve(record, outliers=SparseOutliers(indices=positions, values=values))
    compressed.apply(net.conv2, "weight", with_outliers)
    assert net.conv2.weight.view(-1)[4607] == 2.0
    loaded, path = roundtrip(tmp_path, net, factory, inputs)
    got = compressed.records(loaded.conv2)["weight"].outliers
    assert torch.equal(got.indices, positions) and torch.equal(got.values, values)
    assert_size_matches_accounting(net, path)


def test_structural_edits_are_replayed(tmp_path, clusterer, quantize):
    """A folded batch norm (Identity) and a bias created by folding come back on the factory's model."""
    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8),
                                   torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 4)).eval()

    model = make()
    model[0].bias = torch.nn.Parameter(torch.randn(8))
    model[1] = torch.nn.Identity()
    quantize(model, "0", QuantizationSpec(dtype="int8", granularity=PerChannelGranularity(axis=0)))
    x = torch.randn(2, 3, 8, 8)
    path = BACKEND.save(model, tmp_path / "folded.safetensors")
    loaded = bitsmith.load(path, make, registry=_registry())
    assert isinstance(loaded[1], torch.nn.Identity) and loaded[0].bias is not None
    assert torch.equal(loaded(x), model(x))
