"""A reduced ``benchmarks/fidelity.py``: what GPTQ candidates add on MobileNetV2 at 4 BPW (slow).

16 calibration crops and three 2/4/6-bit GPTQ candidates next to seed 000's k-means
ones; fidelity is top-1 agreement with fp32 on 64 crops of other photos.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

SEED = ["2-bit", "4-bit", "6-bit"]
GPTQ = ["2-bit +scale @gptq", "4-bit +scale @gptq", "6-bit +scale @gptq"]


def test_gptq_candidates_lift_mobilenet_v2_at_4_bpw(tmp_path):
    pytest.importorskip("bitsmith_gptq")
    fidelity = pytest.importorskip("bitsmith_zoo.fidelity")
    from bitsmith.mixed_precision import apply_recipe, compute_sensitivity, generate_recipe
    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig
    from bitsmith.sizes import model_size

    task = fidelity.mobilenet_v2_task(calibration_crops=16, heldout_crops=64, broad_crops=0)  # broad set: benchmark
    table = compute_sensitivity(task.model, task.calibration, SEED + GPTQ, metric=task.sensitivity_metric,
                                cache_dir=tmp_path)
    assert len(table.rows) == 53 * 6 and table.meta["engine"] == "fast"
    layers = table.layer_names
    assert sum(table.score(n, "2-bit +scale @gptq") for n in layers) < 0.5 * sum(table.score(n, "2-bit") for n in layers)

    uniform = KMeansPalettizer(task.model, KMeansPalettizerConfig()).prepare()
    results = {}
    for name, candidates in (("seed", SEED), ("gptq", SEED + GPTQ)):
        recipe = generate_recipe(table.select(candidates=candidates), target_bpw=4.0, search="optimal")
        small = apply_recipe(task.model, recipe, table=table)
        results[name] = (model_size(small).bpw, task.fidelity(small))
    u_bpw, u_fid = model_size(uniform).bpw, task.fidelity(uniform)
    assert results["seed"][0] <= 4.0 and results["gptq"][0] <= 4.0 <= u_bpw
    assert u_fid < 0.1  # seed 000's uniform 4-bit breaks MobileNetV2 (one depthwise conv)
    assert results["seed"][1] > u_fid + 0.5
    assert results["gptq"][1] >= 0.8 and results["gptq"][1] > results["seed"][1]
