"""The registered algorithms (other plugins, reached through the registry) round-trip through the file."""

from __future__ import annotations

import pytest
import torch

import bitsmith
from bitsmith import sizes
from bitsmith.config import PalettizationSpec, QuantizationSpec
from bitsmith_export_safetensors import header_nbytes


def _need(kind, name):
    if name not in bitsmith.plugins.default_registry().names(kind):
        pytest.skip(f"{kind} {name!r} is not installed")
    return bitsmith.plugins.get(kind, name)


def _check(tmp_path, exported, reference, factory, inputs):
    backend = bitsmith.plugins.get("export_backend", "safetensors")
    path = backend.save(exported, tmp_path / "model.safetensors")
    loaded = bitsmith.load(path, factory)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), reference)
    payload = path.stat().st_size - header_nbytes(path)
    accounted = sizes.model_size(exported).total.bytes
    assert abs(payload - accounted) <= 0.01 * accounted
    return loaded


def test_int8_w8a8_through_quantizer_finalize(tmp_path, factory, inputs):
    quantizer_cls = _need("quantizer", "int8")
    from bitsmith.quantization import QuantizerConfig

    quantizer = quantizer_cls(factory(), QuantizerConfig())
    prepared = quantizer.prepare(inputs)
    with quantizer.calibration_mode(), torch.no_grad():
        for seed in range(3):
            prepared(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        reference = prepared(inputs)
    exported = quantizer.finalize(backend="safetensors")
    with torch.no_grad():
        assert torch.equal(exported(inputs), reference)
    loaded = _check(tmp_path, exported, reference, factory, inputs)
    assert sum(1 for *_, r in bitsmith.compressed.iter_records(loaded)
               if isinstance(r, bitsmith.compressed.ActivationQuant)) > 0


@pytest.mark.parametrize("name", ["kmeans", "sensitive_kmeans"])
def test_palettizers(tmp_path, factory, inputs, name):
    palettizer_cls = _need("palettizer", name)
    _need("cluster", "kmeans")  # sensitive_kmeans clusters with the kmeans kernel
    from bitsmith.config import KMeansPalettizerConfig, ModuleKMeansPalettizerConfig

    spec = PalettizationSpec(n_bits=3, lut_qspec=QuantizationSpec(dtype="int8"))
    config = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec}))
    palettizer = palettizer_cls(factory(), config)
    prepared = palettizer.prepare(inputs)
    with torch.no_grad():
        reference = prepared(inputs)
    exported = palettizer.finalize(backend="safetensors")
    _check(tmp_path, exported, reference, factory, inputs)
