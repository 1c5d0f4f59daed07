"""Core ML conversion of MobileNetV2 palettized at 4 bits (slow): LUT ops everywhere, weight file ~ accounting."""

from __future__ import annotations

import logging

import pytest
import torch

import bitsmith
from bitsmith import compressed

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install coremltools)")
zoo = pytest.importorskip("bitsmith_zoo")
from bitsmith_export_coreml import CoreMLBackend  # noqa: E402
from bitsmith_export_coreml.backend import weight_file  # noqa: E402

pytestmark = pytest.mark.slow
logging.getLogger("coremltools").setLevel(logging.ERROR)


def test_mobilenet_v2_4bit(tmp_path, capsys):
    if "kmeans" not in bitsmith.plugins.default_registry().names("palettizer"):
        pytest.skip("palettizer 'kmeans' is not installed")
    from bitsmith.palettization import KMeansPalettizer

    x = zoo.image_crops(1, split="heldout")
    backend = CoreMLBackend()
    dense_path = backend.save(zoo.load_mobilenet_v2(), tmp_path / "dense.mlpackage", example_inputs=x)
    palettizer = KMeansPalettizer(zoo.load_mobilenet_v2())
    prepared = palettizer.prepare(num_workers=2)
    exported = palettizer.finalize(backend="coreml")
    with torch.no_grad():
        assert torch.equal(exported(x), prepared(x))
    mlmodel = backend.convert(exported, x)
    ops = [op.op_type for f in mlmodel._mil_program.functions.values() for op in f.operations]
    n_records = len({id(r) for *_, r in compressed.iter_records(exported)})
    assert ops.count("constexpr_lut_to_dense") == n_records == 53
    path = backend.save(exported, tmp_path / "mnv2_4bit.mlpackage", example_inputs=x)
    size, dense = weight_file(path).stat().st_size, weight_file(dense_path).stat().st_size
    index_bytes = sum(r.indices.numel() * 4 / 8 for *_, r in compressed.iter_records(exported))
    lut_bytes = 53 * 16 * 2
    assert index_bytes + lut_bytes <= size <= 1.1 * (index_bytes + lut_bytes) + 128 * 200
    assert dense / size > 3.5
    with capsys.disabled():
        print(f"\n[coreml mnv2 4-bit] weight.bin {size} B (indices {index_bytes:.0f} B + fp16 LUTs {lut_bytes} B "
              f"+ fp16 BN/biases and blob headers); dense fp16 weight.bin {dense} B, {dense / size:.2f}x")
