"""End to end on a real pretrained model: MobileNetV2 with ImageNet weights (slow)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mobilenet():
    zoo = pytest.importorskip("bitsmith_zoo.mobilenet_v2")
    from bitsmith_zoo.data import image_crops

    model = zoo.load_mobilenet_v2().eval()
    return model, image_crops(4, split="calibration"), image_crops(16, split="heldout")


def test_three_stages_on_mobilenet_v2(mobilenet, tmp_path):
    from bitsmith.mixed_precision import apply_recipe, compute_sensitivity, generate_recipe
    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig
    from bitsmith.sizes import model_size

    model, calibration, heldout = mobilenet
    table = compute_sensitivity(model, calibration, cache_dir=tmp_path)
    assert len(table.layers) == 53 and len(table.rows) == 159 and table.meta["engine"] == "fast"
    assert table.layer_names[0] == "features.0.0" and table.layer_names[-1] == "classifier.1"
    first = table.rows_for("features.0.0")  # 864 weights: 2/4/6-bit sizes from bitsmith.sizes
    assert [round(r.kib, 2) for r in first] == [0.23, 0.48, 0.88]
    assert first[0].score < first[1].score < first[2].score  # more bits, higher PSNR
    greedy = generate_recipe(table, target_bpw=4, search="greedy")
    optimal = generate_recipe(table, target_bpw=4, search="optimal")
    assert greedy.bpw <= 4 and optimal.bpw <= 4
    assert optimal.predicted_distortion <= greedy.predicted_distortion

    with torch.inference_mode():
        ref = model(heldout).argmax(1)
        uniform = KMeansPalettizer(model, KMeansPalettizerConfig()).prepare()  # 4-bit per-tensor everywhere
        mixed = apply_recipe(model, optimal, table=table)
        agree_uniform = (uniform(heldout).argmax(1) == ref).float().mean().item()
        agree_mixed = (mixed(heldout).argmax(1) == ref).float().mean().item()
    assert model_size(mixed).bpw <= model_size(uniform).bpw  # equal or lower BPW ...
    assert agree_mixed > agree_uniform  # ... and better fidelity (per-tensor 4-bit breaks a depthwise conv)
    assert model_size(mixed).mib == pytest.approx(optimal.size_mib, abs=1e-9)
    # a rerun comes from the cache
    again = compute_sensitivity(model, calibration, cache_dir=tmp_path)
    assert again.meta["pairs_scored"] == 0 and [r.score for r in again.rows] == [r.score for r in table.rows]


def test_fast_engine_is_bit_identical_on_mobilenet_v2(mobilenet):
    from bitsmith.mixed_precision import compute_sensitivity

    model, calibration, _ = mobilenet
    layers = [r"features\.(1|17)\..*", "classifier.1"]
    fast = compute_sensitivity(model, calibration[:4], [2, 6], layers=layers, engine="fast", cache_dir=None)
    naive = compute_sensitivity(model, calibration[:4], [2, 6], layers=layers, engine="naive", cache_dir=None)
    assert fast.meta["engine"] == "fast" and len(fast.rows) == 12
    assert [r.score for r in fast.rows] == [r.score for r in naive.rows]
