"""Real-model check: MobileNetV2 (ImageNet weights) W8A8 against fp32 on held-out photos."""

from __future__ import annotations

import pytest
import torch

from bitsmith.quantization import Quantizer, QuantizerConfig
from bitsmith.sizes import model_size

pytestmark = pytest.mark.slow


@torch.no_grad()
def logits(model, images, batch=16):
    return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])


def test_mobilenet_v2_w8a8_agrees_with_fp32():
    mobilenet_v2 = pytest.importorskip("bitsmith_zoo.mobilenet_v2")
    data = pytest.importorskip("bitsmith_zoo.data")
    fp32 = mobilenet_v2.load_mobilenet_v2().eval()
    calibration = data.image_crops(32, split="calibration")
    heldout = data.image_crops(64, split="heldout")
    reference = logits(fp32, heldout)

    quantizer = Quantizer(fp32, QuantizerConfig())
    prepared = quantizer.prepare(calibration[:1])
    assert len(quantizer.folded) == 52  # every BatchNorm2d follows a conv
    assert len(quantizer.weights) == 53  # 52 convs + the classifier
    with quantizer.calibration_mode():
        logits(prepared, calibration, batch=32)  # one batch: the moving average starts from all 32 crops
    output = logits(prepared, heldout)

    agreement = (output.argmax(1) == reference.argmax(1)).float().mean().item()
    sqnr = 10 * torch.log10(reference.pow(2).mean() / (output - reference).pow(2).mean()).item()
    print(f"MobileNetV2 W8A8: top-1 agreement {agreement:.3f} on {len(heldout)} held-out crops, "
          f"logit SQNR {sqnr:.1f} dB")
    assert torch.isfinite(output).all()
    assert agreement >= 0.7  # measured 0.80 (torch.ao's unfused min/max PTQ: 0.75 on the first 32)
    assert sqnr > 14.0  # measured 16.2 dB
    assert torch.equal(output[:4].argmax(1), reference[:4].argmax(1))  # the centre crops of the 4 photos
    fp32_mib, int8_mib = model_size(fp32).mib, model_size(prepared).mib
    assert int8_mib < 0.3 * fp32_mib  # measured 13.50 MiB -> 3.45 MiB (weights 1 byte + scales; folded BN gone)
