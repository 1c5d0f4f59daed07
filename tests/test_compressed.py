"""The compressed-weight records and palettize_tensor's layouts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from bitsmith import CompressionError, compressed
from bitsmith.config import PalettizationSpec, PerGroupedChannelGranularity, QuantizationSpec
from bitsmith.palettization import palettize_tensor


def test_palettize_tensor_per_tensor_uses_at_most_k_values(quantile_clusterer):
    torch.manual_seed(0)
    w = torch.randn(16, 8)
    rec = palettize_tensor(w, PalettizationSpec(n_bits=2), quantile_clusterer)
    dense = rec.dequantize()
    assert dense.shape == w.shape and torch.unique(dense).numel() <= 4
    assert rec.lut.shape == (1, 4, 1) and rec.indices.dtype == torch.uint8 and rec.indices.shape == (16, 8)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("cluster_dim", [1, 2])
def test_grouped_luts_serve_their_channels(axis, cluster_dim, quantile_clusterer):
    torch.manual_seed(0)
    w = torch.randn(8, 12, 3)
    spec = PalettizationSpec(n_bits=2, granularity=PerGroupedChannelGranularity(axis=axis, group_size=4),
                             cluster_dim=cluster_dim)
    rec = palettize_tensor(w, spec, quantile_clusterer)
    dense = rec.dequantize()
    groups = w.shape[axis] // 4
    assert rec.lut.shape == (groups, 4, cluster_dim)
    expected_idx_shape = list(w.shape)
    expected_idx_shape[axis] //= cluster_dim
    assert list(rec.indices.shape) == expected_idx_shape
    for g in range(groups):
        chunk = dense.narrow(axis, g * 4, 4)
        if cluster_dim == 1:
            assert set(torch.unique(chunk).tolist()) <= set(rec.lut[g, :, 0].tolist())
        else:
            vectors = chunk.movedim(axis, 0).reshape(2, 2, -1).permute(0, 2, 1).reshape(-1, 2)
            lut_rows = {tuple(r) for r in rec.lut[g].tolist()}
            assert {tuple(v) for v in vectors.tolist()} <= lut_rows
    # Group g's values come from clustering exactly its own channels: perturbing another group changes nothing.
    w2 = w.clone()
    w2.narrow(axis, 4, 4).mul_(100)
    rec2 = palettize_tensor(w2, spec, quantile_clusterer)
    assert torch.equal(rec2.dequantize().narrow(axis, 0, 4), dense.narrow(axis, 0, 4))


def test_per_channel_scale_restores_channel_ranges(quantile_clusterer):
    w = torch.tensor([[1.0, -1.0, 0.5, 0.25], [1000.0, -1000.0, 500.0, 250.0]])
    plain = palettize_tensor(w, PalettizationSpec(n_bits=2), quantile_clusterer).dequantize()
    scaled_rec = palettize_tensor(w, PalettizationSpec(n_bits=2, enable_per_channel_scale=True), quantile_clusterer)
    assert torch.allclose(scaled_rec.dequantize(), w)
    assert not torch.allclose(plain, w)
    assert torch.equal(scaled_rec.per_channel_scale, torch.tensor([1.0, 1000.0]))


LUT_QSPECS = [("int8", "symmetric"), ("int8", "asymmetric"), ("uint8", "symmetric"), ("uint8", "asymmetric"),
              ("float8_e4m3fn", "symmetric"), ("float8_e5m2", "symmetric")]


@pytest.mark.parametrize("dtype, scheme", LUT_QSPECS)
def test_lut_values_are_really_rounded_to_the_lut_dtype(dtype, scheme, quantile_clusterer):
    torch.manual_seed(0)
    w = torch.randn(32, 16) * 0.02 + 0.01
    qspec = QuantizationSpec(dtype=dtype, qscheme=scheme)
    rec = palettize_tensor(w, PalettizationSpec(n_bits=4, lut_qspec=qspec), quantile_clusterer)
    lq = rec.lut_quant
    assert lq.int_lut.dtype == getattr(torch, dtype)
    zp = 0 if lq.zero_point is None else lq.zero_point.float()[:, None, None]
    rebuilt = (lq.int_lut.float() - zp) * lq.scale[:, None, None]
    assert torch.equal(rebuilt, rec.lut)
    lo, hi = qspec.quant_range
    assert float(lq.int_lut.float().min()) >= lo and float(lq.int_lut.float().max()) <= hi
    raw = palettize_tensor(w, PalettizationSpec(n_bits=4), quantile_clusterer).lut
    step = float(lq.scale.max())
    assert (rec.lut - raw).abs().max() <= (step / 2 + 1e-9 if not dtype.startswith("float8") else raw.abs().max() / 8)


def test_layout_errors_name_the_layer(quantile_clusterer):
    spec = PalettizationSpec(n_bits=2, granularity=PerGroupedChannelGranularity(axis=0, group_size=16))
    with pytest.raises(CompressionError, match=r"features\.3\.weight: 24 channels along axis 0 are not divisible by "
                                               r"group_size 16; group sizes that divide it: 1, 2, 3, 4, 6, 8, 12, 24"):
        palettize_tensor(torch.randn(24, 4), spec, quantile_clusterer, name="features.3.weight")
    with pytest.raises(CompressionError, match="fc.weight: cluster_dim 4 does not divide the 6 channels"):
        palettize_tensor(torch.randn(6, 4), PalettizationSpec(n_bits=2, cluster_dim=4), quantile_clusterer,
                         name="fc.weight")
    with pytest.raises(CompressionError, match="bias: a 1-D tensor"):
        palettize_tensor(torch.randn(6), PalettizationSpec(granularity=PerGroupedChannelGranularity(axis=1, group_size=1)),
                         quantile_clusterer, name="bias")


def test_few_unique_values_are_kept_exact(quantile_clusterer):
    w = torch.tensor([[0.5, -0.5], [0.5, 0.25]])
    rec = palettize_tensor(w, PalettizationSpec(n_bits=4), quantile_clusterer)
    assert torch.equal(rec.dequantize(), w)
    assert rec.lut.shape == (1, 16, 1)


def test_records_attach_apply_iterate_and_survive_deepcopy(quantile_clusterer):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    rec = palettize_tensor(model[0].weight, PalettizationSpec(n_bits=1), quantile_clusterer)
    compressed.apply(model[0], "weight", rec)
    assert torch.equal(model[0].weight.data, rec.dequantize())
    assert [(n, t) for n, _, t, _ in compressed.iter_records(model)] == [("0", "weight")]
    clone = copy.deepcopy(model)
    assert compressed.is_compressed(clone)
    assert compressed.detach(clone[0], "weight") is not None and not compressed.is_compressed(clone)
    assert compressed.is_compressed(model)


def test_quantized_tensor_block_expansion():
    int_data = torch.arange(-8, 8, dtype=torch.int8).reshape(2, 8)
    scale = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    spec = QuantizationSpec(dtype="int8")
    rec = compressed.QuantizedTensor(int_data=int_data, scale=scale, zero_point=None, spec=spec, shape=(2, 8),
                                     dtype=torch.float32)
    expected_scale = torch.tensor([[1.0] * 4 + [2.0] * 4, [3.0] * 4 + [4.0] * 4])
    assert torch.equal(rec.dequantize(), int_data.float() * expected_scale)


def test_activation_quant_round_trip_error_bound():
    spec = QuantizationSpec(dtype="int8", qscheme="asymmetric")
    aq = compressed.ActivationQuant(scale=torch.tensor(0.05), zero_point=torch.tensor(-10.0), spec=spec)
    x = torch.linspace(-5, 6, 1000)
    err = (aq.fake_quantize(x) - x).abs()
    assert float(err.max()) <= 0.025 + 1e-6
