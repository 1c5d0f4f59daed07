"""The DKM math: chunked vs full autograd, memory kept for backward, soft/hard limit, layout, clusterer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from bitsmith.testing import palettizer_models as helpers
from bitsmith.config import PalettizationSpec, PerGroupedChannelGranularity, QuantizationSpec
from bitsmith.palettization import palettize_tensor
from bitsmith.testing import check_clusterer
from bitsmith_dkm import ChunkedDKM, DKMOptions, DKMParametrization, SoftKMeansClusterer, dkm_reconstruct
from bitsmith_dkm.layout import Layout


def random_problem(d: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(d)
    x = torch.randn(3, 300, d, generator=gen, dtype=dtype, requires_grad=True)
    c = torch.randn(3, 8, d, generator=gen, dtype=dtype, requires_grad=True)
    inv_temp = torch.rand(3, 1, 1, generator=gen, dtype=dtype) * 3 + 0.5
    return x, c, inv_temp, torch.randn(3, 300, d, generator=gen, dtype=dtype)


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("iterations", [0, 2])
def test_chunked_matches_full_autograd(d, iterations):
    x, c, inv_temp, grad_y = random_problem(d)
    y_full, c_full = dkm_reconstruct(x, c, inv_temp, iterations)
    g_full = torch.autograd.grad(y_full, (x, c), grad_y)
    y_chunk, c_chunk = dkm_reconstruct(x, c, inv_temp, iterations, memory_saving=True, rows=37)
    g_chunk = torch.autograd.grad(y_chunk, (x, c), grad_y)
    torch.testing.assert_close(y_chunk, y_full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_chunk, c_full, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_chunk, g_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert float(b.abs().sum()) > 0


def test_chunked_gradcheck():
    x, c, inv_temp, _ = random_problem(2)
    x, c = x[:1, :12].detach().requires_grad_(), c[:1, :3].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ChunkedDKM.apply(a, b, inv_temp[:1], 2, 5)[0], (x, c))


def saved_numels(fn) -> list[int]:
    """Sizes of every tensor autograd saves for backward while running ``fn``."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


def test_memory_saving_keeps_no_n_by_k_matrix_for_backward():
    n, k = 4096, 16
    x = torch.randn(1, n, 1, requires_grad=True)
    c = torch.linspace(-2, 2, k).reshape(1, k, 1).requires_grad_()
    inv_temp = torch.full((1, 1, 1), 4.0)
    full = saved_numels(lambda: dkm_reconstruct(x, c, inv_temp, 1))
    chunked = saved_numels(lambda: dkm_reconstruct(x, c, inv_temp, 1, memory_saving=True, rows=256))
    assert max(full) >= n * k and sum(full) >= 3 * n * k
    assert max(chunked) == n and sum(chunked) <= n + 4 * k + 1  # x, then k-sized centroids/denominators


def conv_spec(**kw) -> PalettizationSpec:
    return PalettizationSpec(n_bits=2, **kw)


LAYOUT_SPECS = [
    conv_spec(),
    conv_spec(granularity=PerGroupedChannelGranularity(axis=0, group_size=4)),
    conv_spec(granularity=PerGroupedChannelGranularity(axis=1, group_size=2), cluster_dim=2),
    conv_spec(granularity=PerGroupedChannelGranularity(axis=0, group_size=2), enable_per_channel_scale=True),
    conv_spec(lut_qspec=QuantizationSpec(dtype="int8")),
]


@pytest.mark.parametrize("spec", LAYOUT_SPECS, ids=lambda s: s.describe())
def test_snapped_record_matches_eval_forward_and_core_layout(spec):
    torch.manual_seed(0)
    weight = torch.randn(8, 4, 3, 3)
    init = palettize_tensor(weight, spec, helpers.exact_kmeans if spec.cluster_dim == 1 else SoftKMeansClusterer())
    param = DKMParametrization(spec, tuple(weight.shape), init.lut, DKMOptions(temperature=0.05)).eval()
    record = param.record(weight)
    torch.testing.assert_close(record.dequantize(), param(weight), rtol=0, atol=0)
    assert record.indices.shape == init.indices.shape and record.lut.shape == init.lut.shape
    # With no training, the snapped LUT is the k-means LUT and the indices are the nearest entries.
    assert torch.equal(record.lut, init.lut)
    layout = Layout.of(weight.shape, spec)
    torch.testing.assert_close(layout.from_vectors(layout.to_vectors(weight)), weight, rtol=0, atol=0)


@pytest.mark.parametrize("spec", LAYOUT_SPECS[:3], ids=lambda s: s.describe())
def test_soft_equals_hard_at_low_temperature(spec):
    torch.manual_seed(1)
    weight = torch.randn(8, 4, 3, 3)
    init = palettize_tensor(weight, spec, helpers.exact_kmeans if spec.cluster_dim == 1 else SoftKMeansClusterer())
    for temperature, close in ((1e-4, True), (0.5, False)):
        param = DKMParametrization(spec, tuple(weight.shape), init.lut, DKMOptions(temperature=temperature))
        soft = param.train()(weight)
        hard = param.eval()(weight)
        gap = (soft - hard).abs().max().item()
        assert (gap < 1e-4) if close else (gap > 1e-2), (temperature, gap)


def test_straight_through_forward_is_hard_with_soft_gradients():
    torch.manual_seed(2)
    layer = nn.Linear(16, 8)
    spec = conv_spec()
    init = palettize_tensor(layer.weight.detach(), spec, helpers.exact_kmeans)
    param = DKMParametrization(spec, tuple(layer.weight.shape), init.lut,
                               DKMOptions(temperature=0.3, straight_through=True))
    parametrize.register_parametrization(layer, "weight", param)
    layer.train()
    soft_free = layer.weight
    with torch.no_grad():
        layer.eval()
        hard = layer.weight.clone()
        layer.train()
    torch.testing.assert_close(soft_free, hard, rtol=0, atol=1e-7)
    soft_free.sum().backward()
    assert layer.parametrizations.weight.original.grad.abs().sum() > 0
    assert param.centroids.grad.abs().sum() > 0


def test_soft_kmeans_clusterer_contract_and_quality():
    check_clusterer(SoftKMeansClusterer())
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(3000, 1, generator=gen), 4 + 0.5 * torch.randn(1000, 1, generator=gen)])
    w = torch.rand(4000, generator=gen)
    for k in (4, 8):
        c_soft, l_soft = SoftKMeansClusterer()(x, k, sample_weight=w, seed=0)
        c_opt, l_opt = helpers.exact_kmeans(x, k, sample_weight=w)
        cost_soft = (w * (x[:, 0] - c_soft[l_soft, 0]) ** 2).sum()
        cost_opt = (w * (x[:, 0] - c_opt[l_opt, 0]) ** 2).sum()
        assert cost_opt <= cost_soft <= 1.01 * cost_opt
