"""Real model: pretrained MobileNetV2 (bitsmith_zoo) palettized with k-means, top-1 agreement with fp32.

Agreement = share of 64 real-photo crops (32 held-out + 32 calibration,
``bitsmith_zoo.data.image_crops``) whose top-1 class is the fp32 model's. Measured on the
development machine (torch 2.13 CPU):

=====================================================================  =========
4-bit per-grouped-channel g16 (g8 for the 24- and 1000-channel layers)  0.19
4-bit per-tensor                                                        0.00
4-bit per-tensor, first depthwise conv (features.1.conv.0.0) at 8-bit    0.45
6-bit per-tensor                                                        0.80
8-bit per-tensor                                                        0.98
=====================================================================  =========

Plain post-training 4-bit k-means is poor on MobileNetV2 (coremltools 9.0's
PostTrainingPalettizer gets 0.12 with 4-bit g8 and 0.00 per-tensor on the same crops);
a single 32x1x3x3 depthwise conv alone takes per-tensor 4-bit agreement to 0.05. Seed 001
recommends 6-8 bit k-means or training-time DKM for 4-bit on such networks. The test asserts
those facts with margins.
"""

from __future__ import annotations

import pytest
import torch

from bitsmith.config import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
    PerGroupedChannelGranularity,
)
from bitsmith.resolve import palettizable_modules

zoo = pytest.importorskip("bitsmith_zoo.mobilenet_v2", reason="needs bitsmith_zoo")
data = pytest.importorskip("bitsmith_zoo.data", reason="needs bitsmith_zoo")

FIRST_DEPTHWISE = "features.1.conv.0.0"


def per_layer_config(model, spec_of):
    cfg = KMeansPalettizerConfig(global_config=None)
    for name, layer in palettizable_modules(model):
        cfg.set_module_name(name, ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec_of(name, layer)}))
    return cfg


def grouped16(name, layer):
    size = 16 if layer.weight.shape[0] % 16 == 0 else 8  # 24-channel projections and the 1000-way classifier
    return PalettizationSpec(n_bits=4, granularity=PerGroupedChannelGranularity(axis=0, group_size=size))


@pytest.mark.slow
def test_mobilenet_v2_top1_agreement(registry):
    from bitsmith_kmeans.palettizer import KMeansPalettizer

    model = zoo.load_mobilenet_v2(pretrained=True)
    x = torch.cat([data.image_crops(32, "heldout"), data.image_crops(32, "calibration")])
    with torch.no_grad():
        reference = model(x).argmax(1)

    def agreement(spec_of):
        palettizer = KMeansPalettizer(model, per_layer_config(model, spec_of), registry=registry)
        prepared = palettizer.prepare(progress=False)
        assert len(palettizer.report().layers) == 53
        with torch.no_grad():
            return float((prepared(x).argmax(1) == reference).float().mean())

    results = {
        "4-bit g16": agreement(grouped16),
        "4-bit per-tensor": agreement(lambda n, l: PalettizationSpec(n_bits=4)),
        "4-bit per-tensor, first depthwise at 8-bit": agreement(
            lambda n, l: PalettizationSpec(n_bits=8 if n == FIRST_DEPTHWISE else 4)),
        "8-bit per-tensor": agreement(lambda n, l: PalettizationSpec(n_bits=8)),
    }
    print("top-1 agreement with fp32:", {k: round(v, 3) for k, v in results.items()})
    assert results["8-bit per-tensor"] >= 0.9
    assert results["4-bit g16"] >= results["4-bit per-tensor"] + 0.1
    assert results["4-bit per-tensor"] <= 0.1  # the depthwise conv: known to break per-tensor 4-bit
    assert results["4-bit per-tensor, first depthwise at 8-bit"] >= results["4-bit per-tensor"] + 0.25
