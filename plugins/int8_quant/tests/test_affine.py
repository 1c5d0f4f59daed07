"""Quantize/dequantize math: qparams, error bounds, clamping, exact zero."""

from __future__ import annotations

import pytest
import torch

from bitsmith.config.specs import QuantizationSpec
from bitsmith_int8_quant.affine import (
    MIN_SCALE,
    dequantize,
    fake_quantize,
    qparams,
    quantize,
    representable_range,
    storage_dtype,
)

DTYPES = ["int8", "uint8", "int4", "uint4"]
SCHEMES = ["symmetric", "asymmetric"]


def test_symmetric_int8_qparams():
    scale, zp = qparams(torch.tensor(-2.0), torch.tensor(1.0), QuantizationSpec(dtype="int8", qscheme="symmetric"))
    assert zp is None
    assert scale.item() == pytest.approx(2.0 / 127)


def test_symmetric_unsigned_has_midpoint_zero_point():
    spec = QuantizationSpec(dtype="uint8", qscheme="symmetric")
    scale, zp = qparams(torch.tensor(-1.0), torch.tensor(0.5), spec)
    assert scale.item() == pytest.approx(1.0 / 127) and zp.item() == 128 and zp.dtype == torch.uint8
    scale4, zp4 = qparams(torch.tensor(-1.0), torch.tensor(0.5), QuantizationSpec(dtype="uint4", qscheme="symmetric"))
    assert scale4.item() == pytest.approx(1.0 / 7) and zp4.item() == 8


def test_asymmetric_uint8_qparams():
    scale, zp = qparams(torch.tensor(-1.0), torch.tensor(3.0), QuantizationSpec(dtype="uint8", qscheme="asymmetric"))
    assert scale.item() == pytest.approx(4.0 / 255)
    assert zp.item() == 64  # round(0 - (-1) / (4/255)) = round(63.75)


def test_asymmetric_int8_positive_range_widened_to_zero():
    scale, zp = qparams(torch.tensor(0.5), torch.tensor(2.55), QuantizationSpec(dtype="int8", qscheme="asymmetric"))
    assert scale.item() == pytest.approx(2.55 / 255)
    assert zp.item() == -128 and zp.dtype == torch.int8


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_error_at_most_half_a_step(dtype, scheme):
    spec = QuantizationSpec(dtype=dtype, qscheme=scheme)
    gen = torch.Generator().manual_seed(0)
    lo = -torch.rand(6, 1, generator=gen) * 3 - 0.01
    hi = torch.rand(6, 1, generator=gen) * 2 + 0.01
    scale, zp = qparams(lo, hi, spec)
    low, high = representable_range(scale, zp, spec)
    x = low + (high - low) * torch.rand(6, 1000, generator=gen)
    err = (fake_quantize(x, scale, zp, spec) - x).abs()
    assert (err <= scale / 2 * (1 + 1e-5)).all(), (err / scale).max()
    # the grid covers the observed range, up to the half step lost by rounding the zero point
    tol = scale / 2 + 1e-6
    assert (low <= lo + tol).all() and (high >= hi - tol).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_integers_in_range_and_zero_exact(dtype, scheme):
    spec = QuantizationSpec(dtype=dtype, qscheme=scheme)
    scale, zp = qparams(torch.tensor(-0.7), torch.tensor(2.3), spec)
    x = torch.linspace(-5, 5, 301)
    q = quantize(x, scale, zp, spec)
    qmin, qmax = spec.quant_range
    assert q.dtype == storage_dtype(spec)
    assert int(q.min()) == qmin or scheme == "symmetric"
    assert int(q.max()) == qmax
    assert fake_quantize(torch.zeros(3), scale, zp, spec).eq(0).all()


def test_out_of_range_values_clamp_to_the_grid_edges():
    spec = QuantizationSpec(dtype="int8", qscheme="symmetric")
    scale, zp = qparams(torch.tensor(-1.0), torch.tensor(1.0), spec)
    q = quantize(torch.tensor([-10.0, 10.0]), scale, zp, spec)
    assert q.tolist() == [-128, 127]
    assert dequantize(q, scale, zp).tolist() == pytest.approx([-128 / 127, 1.0])


def test_all_zero_range_gives_min_scale_and_exact_zeros():
    spec = QuantizationSpec(dtype="int8", qscheme="asymmetric")
    scale, zp = qparams(torch.tensor(0.0), torch.tensor(0.0), spec)
    assert scale.item() == pytest.approx(MIN_SCALE)
    out = fake_quantize(torch.zeros(5), scale, zp, spec)
    assert torch.isfinite(out).all() and out.eq(0).all()


def test_float8_is_rejected_by_the_math():
    with pytest.raises(ValueError, match="float8_e4m3fn is not an integer dtype"):
        qparams(torch.tensor(-1.0), torch.tensor(1.0), QuantizationSpec(dtype="float8_e4m3fn"))


def test_matches_core_activation_record():
    from bitsmith.compressed import ActivationQuant

    spec = QuantizationSpec(dtype="int8", qscheme="asymmetric")
    scale, zp = qparams(torch.tensor(-0.3), torch.tensor(5.0), spec)
    x = torch.randn(200) * 3
    record = ActivationQuant(scale=scale, zero_point=zp, spec=spec)
    assert torch.equal(record.fake_quantize(x), fake_quantize(x, scale, zp, spec))
