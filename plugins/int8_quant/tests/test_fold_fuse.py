"""Batch-norm folding and layer -> activation fusion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitsmith import compressed
from bitsmith.config import ModuleQuantizerConfig, QuantizationSpec, QuantizerConfig
from bitsmith_int8_quant import Quantizer
from bitsmith_int8_quant.fold import fold_batchnorm

SYM = QuantizationSpec(dtype="int8", qscheme="symmetric", observer="min_max")


def trained_bn(channels: int, dim: int = 2) -> nn.Module:
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dim](channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


def test_fold_conv_and_linear_batchnorm_preserves_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), trained_bn(6), nn.ReLU6(),
                          nn.Flatten(), nn.Linear(6 * 4 * 4, 5), trained_bn(5, dim=1)).eval()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    assert fold_batchnorm(model) == ["1", "5"]
    assert isinstance(model[1], nn.Identity) and isinstance(model[5], nn.Identity)
    assert model[0].bias is not None
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_fold_skips_training_shared_compressed_and_transposed():
    conv_t = nn.Sequential(nn.ConvTranspose2d(3, 4, 2), trained_bn(4)).eval()
    assert fold_batchnorm(conv_t) == []
    training = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))  # train mode
    assert fold_batchnorm(training) == []
    shared = nn.Conv2d(4, 4, 1)
    tied = nn.Sequential(shared, trained_bn(4), shared).eval()
    assert fold_batchnorm(tied) == []
    conv = nn.Conv2d(3, 4, 1)
    compressed.attach(conv, "weight", object())
    assert fold_batchnorm(nn.Sequential(conv, trained_bn(4)).eval()) == []


def test_prepare_folds_before_quantizing(registry):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), trained_bn(4), nn.ReLU()).eval()
    x = torch.randn(2, 3, 5, 5)
    quantizer = Quantizer(model, QuantizerConfig.presets.w8(), registry=registry)
    prepared = quantizer.prepare(x)
    assert quantizer.folded == ["1"]
    assert isinstance(prepared[1], nn.Identity) and isinstance(model[1], nn.BatchNorm2d)  # original untouched
    # per-channel weights of the folded conv: error within half a step of the folded weight
    assert (prepared(x) - model(x)).abs().max() < 0.02
    assert not isinstance(Quantizer(model, QuantizerConfig.presets.w8(), registry=registry)
                          .prepare(x, fold_batchnorm=False)[1], nn.Identity)


def sites(model, x, registry, **kwargs):
    config = QuantizerConfig(global_config=ModuleQuantizerConfig(op_state_spec=None, op_input_spec={"*": SYM},
                                                                 op_output_spec={"*": SYM}))
    quantizer = Quantizer(model, config, registry=registry)
    quantizer.prepare(x, **kwargs)
    return [s.label for s in quantizer.activation_sites]


def test_fusion_through_folded_batchnorm_and_inplace_relu(registry):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), trained_bn(4), nn.ReLU6(inplace=True),
                          nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(2, 3, 5, 5)
    assert sites(model, x, registry) == ["0 input.0", "2 output.0", "3 input.0", "3 output.0"]
    assert sites(model, x, registry, fold_batchnorm=False) == ["0 input.0", "0 output.0", "3 input.0", "3 output.0"]


def test_no_fusion_when_the_activation_is_shared_between_producers(registry):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu = nn.Linear(3, 3), nn.Linear(3, 3), nn.ReLU()

        def forward(self, x):
            return self.relu(self.b(self.relu(self.a(x))))

    labels = sites(Net(), torch.randn(2, 3), registry)
    assert labels == ["a input.0", "a output.0", "b input.0", "b output.0"]


def test_fused_quantization_matches_quantizing_after_the_activation(registry):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU()).eval()
    config = QuantizerConfig(global_config=ModuleQuantizerConfig(op_state_spec=None, op_input_spec=None,
                                                                 op_output_spec={"*": SYM}))
    quantizer = Quantizer(model, config, registry=registry)
    prepared = quantizer.prepare(torch.randn(1, 4))
    data = [torch.randn(16, 4) for _ in range(3)]
    with quantizer.calibration_mode(), torch.no_grad():
        for x in data:
            prepared(x)
    record = quantizer.activation_sites[0].record
    top = max(model(x).max().item() for x in data)
    assert record.scale.item() == pytest.approx(top / 127)  # ReLU output range: [0, top]
    x = torch.randn(8, 4)
    assert torch.equal(prepared(x), record.fake_quantize(model(x)))
