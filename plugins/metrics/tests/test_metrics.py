"""Metrics on hand-computed values, their distortions, and registration through the hook."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

import bitsmith_metrics.plugin as metrics_plugin
from bitsmith.plugins import Registry
from bitsmith.testing import check_metric
from bitsmith_metrics import KL, MSE, PSNR, SQNR


@pytest.fixture
def registry():
    return Registry(autoload=False, plugins=[metrics_plugin])


def test_registers_four_metrics(registry):
    assert registry.names("sensitivity_metric") == ["kl", "mse", "psnr", "sqnr"]
    for name in ("psnr", "kl", "sqnr", "mse"):
        metric = registry.get("sensitivity_metric", name)
        check_metric(metric)
        pickle.loads(pickle.dumps(metric))


def test_default_registry_finds_entry_point():
    assert Registry().get("sensitivity_metric", "psnr").unit == "dB"


def test_psnr_known_value():
    ref = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    out = ref + torch.tensor([[0.1, 0.0], [0.0, -0.1]], dtype=torch.float64)
    # peak = max(ref^2) = 4; mse = (0.01 + 0.01) / 4 = 0.005; psnr = 10 log10(800)
    assert PSNR().score(ref, out) == pytest.approx(10 * math.log10(800), abs=1e-9)
    assert PSNR().score(ref, ref) == math.inf
    assert PSNR().to_distortion(30.0) == pytest.approx(1e-3)
    assert PSNR().to_distortion(math.inf) == 0.0
    assert PSNR().from_distortion(1e-3) == pytest.approx(30.0)


def test_sqnr_known_value():
    ref = torch.tensor([3.0, 4.0])
    out = torch.tensor([3.0, 3.0])
    # signal 25, noise 1 -> 10 log10(25)
    assert SQNR().score(ref, out) == pytest.approx(10 * math.log10(25))
    assert SQNR().to_distortion(20.0) == pytest.approx(0.01)


def test_mse_known_value():
    assert MSE().score(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 4.0])) == pytest.approx(5 / 3)
    assert not MSE().higher_is_better
    assert MSE().to_distortion(0.25) == 0.25


def test_kl_known_value():
    ref = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    out = torch.log(torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert KL().score(ref, out) == pytest.approx(expected, rel=1e-12)
    assert KL().score(ref, ref) == 0.0
    # softmax is shift invariant: logits + constant give zero divergence
    assert KL().score(ref, ref + 3.0) == pytest.approx(0.0, abs=1e-15)


def test_kl_over_a_chosen_dim():
    ref = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    out = ref + 0.1
    assert KL(dim=1).score(ref, out) == pytest.approx(0.0, abs=1e-12)
    assert KL(dim=1).score(ref, out.flip(1)) > 0.01


def test_dB_distortions_add_like_noise_powers():
    torch.manual_seed(0)
    ref = torch.randn(20000)
    n1, n2 = 0.01 * torch.randn(20000), 0.02 * torch.randn(20000)
    m = SQNR()
    combined = m.from_distortion(m.to_distortion(m.score(ref, ref + n1)) + m.to_distortion(m.score(ref, ref + n2)))
    assert combined == pytest.approx(m.score(ref, ref + n1 + n2), abs=0.1)


@pytest.mark.parametrize("metric", [PSNR(), SQNR(), MSE(), KL()])
def test_bad_input_names_the_metric(metric):
    with pytest.raises(ValueError, match=f"{metric.name}: reference shape"):
        metric.score(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(TypeError, match=metric.name):
        metric.score([1.0], torch.zeros(1))
