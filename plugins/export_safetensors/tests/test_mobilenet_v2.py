"""MobileNetV2 round trips (slow): 4-bit k-means and W8A8, bit-identical after load, file size = accounting."""

from __future__ import annotations

import pytest
import torch

import bitsmith
from bitsmith import sizes
from bitsmith_export_safetensors import header_nbytes, read_tensors

zoo = pytest.importorskip("bitsmith_zoo")
pytestmark = pytest.mark.slow


def _roundtrip(tmp_path, exported, prepared, x, capsys, label):
    backend = bitsmith.plugins.get("export_backend", "safetensors")
    path = backend.save(exported, tmp_path / "mnv2.safetensors")
    loaded = bitsmith.load(path, zoo.load_mobilenet_v2)
    with torch.no_grad():
        assert torch.equal(loaded(x), prepared(x))
    header = header_nbytes(path)
    payload = path.stat().st_size - header
    accounted = sizes.model_size(exported).total.bytes
    assert abs(payload - accounted) <= 0.01 * accounted
    count = len(read_tensors(path))
    assert header < 400 * count, f"header {header} B for {count} tensors: a few hundred bytes per tensor"
    with capsys.disabled():
        print(f"\n[safetensors mnv2 {label}] file {path.stat().st_size} B = header {header} B ({count} tensors) + "
              f"payload {payload} B; "
              f"accounting {accounted:.0f} B ({100 * (payload - accounted) / accounted:+.3f}%)")


def test_kmeans_4bit(tmp_path, capsys):
    if "kmeans" not in bitsmith.plugins.default_registry().names("palettizer"):
        pytest.skip("palettizer 'kmeans' is not installed")
    from bitsmith.palettization import KMeansPalettizer

    x = zoo.image_crops(2, split="heldout")
    palettizer = KMeansPalettizer(zoo.load_mobilenet_v2())
    prepared = palettizer.prepare(num_workers=2)
    _roundtrip(tmp_path, palettizer.finalize(backend="safetensors"), prepared, x, capsys, "4-bit")


def test_w8a8(tmp_path, capsys):
    if "int8" not in bitsmith.plugins.default_registry().names("quantizer"):
        pytest.skip("quantizer 'int8' is not installed")
    from bitsmith.quantization import Quantizer, QuantizerConfig

    calibration, x = zoo.image_crops(8), zoo.image_crops(2, split="heldout")
    quantizer = Quantizer(zoo.load_mobilenet_v2(), QuantizerConfig())
    prepared = quantizer.prepare(calibration[:1])
    with quantizer.calibration_mode(), torch.no_grad():
        for batch in calibration.split(4):
            prepared(batch)
    _roundtrip(tmp_path, quantizer.finalize(backend="safetensors"), prepared, x, capsys, "w8a8")
