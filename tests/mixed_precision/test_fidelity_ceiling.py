"""``benchmarks/fidelity_ceiling.py``'s mean-shift correction: which convs feed a BatchNorm, and the exact shift."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
from torch import nn

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "fidelity_ceiling.py"


def _ceiling():
    spec = importlib.util.spec_from_file_location("fidelity_ceiling", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4),            # 0 -> 1: a pair
        nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.BatchNorm2d(4),  # 2 -> 3: a depthwise pair
        nn.Conv2d(4, 2, 1), nn.ReLU(), nn.BatchNorm2d(2),              # 4 -> ReLU -> 6: not a pair
    )
    with torch.no_grad():
        for bn in (model[1], model[3], model[6]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.fill_(1e-4)  # amplifies any input offset ~100x, like MobileNetV2's quiet channels
    return model.eval()


def test_pairs_are_convs_whose_output_a_batchnorm_reads_directly():
    model = _model()
    batch = torch.rand(2, 3, 8, 8)
    pairs = _ceiling().conv_batchnorm_pairs(model, batch)
    assert {conv: bn for conv, (bn, _) in pairs.items()} == {"0": "1", "2": "3"}
    torch.testing.assert_close(pairs["0"][1], batch.mean(dim=(0, 2, 3)))


def test_mean_correction_restores_outputs_on_constant_inputs():
    ceiling = _ceiling()
    model = _model()
    constant = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1).expand(2, 3, 9, 9).clone()
    pairs = ceiling.conv_batchnorm_pairs(model, constant)
    changed = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for index in (0, 2):
            changed[index].weight.mul_(1 + 0.01 * torch.randn_like(changed[index].weight))
    corrected = ceiling.mean_corrected(changed, model, pairs)
    with torch.no_grad():
        reference, before, after = model(constant), changed(constant), corrected(constant)
    assert (before - reference).abs().max() > 0.1  # 1% weight noise, amplified by the quiet BatchNorms
    torch.testing.assert_close(after, reference, atol=1e-4, rtol=1e-4)
    assert torch.equal(changed[0].weight, corrected[0].weight)  # weights untouched, only running means move
    assert not torch.equal(changed[1].running_mean, corrected[1].running_mean)
