"""Whole-model palettization layer by layer: what is copied, chunked dequantize, the cheap report, workers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bitsmith import compressed
from bitsmith.config import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
    PerGroupedChannelGranularity,
)
from bitsmith.palettization.memory import copy_for_compression
from bitsmith.palettization.report import lut_values, sqnr_db
from bitsmith.palettization.tensor import all_finite
from bitsmith.palettization.workers import threads_per_worker, worker_pool
from bitsmith_kmeans.palettizer import KMeansPalettizer


def grouped(n_bits=4, group_size=4, axis=0, **kw):
    spec = PalettizationSpec(n_bits=n_bits, granularity=PerGroupedChannelGranularity(axis=axis, group_size=group_size),
                             **kw)
    return KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec}))


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.Linear(16, 4))


def test_copy_shares_only_the_replaced_tensors_and_prepare_leaves_the_original_untouched(registry):
    original = model()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    copied = copy_for_compression(original, [original[0].weight, original[3].weight])
    assert copied[0].weight.data_ptr() == original[0].weight.data_ptr() and copied[0].weight is not original[0].weight
    assert isinstance(copied[0].weight, nn.Parameter) and copied[0].weight.requires_grad
    assert copied[0].bias.data_ptr() != original[0].bias.data_ptr()
    assert copied[4].weight.data_ptr() != original[4].weight.data_ptr()
    prepared = KMeansPalettizer(original, grouped(), registry=registry).prepare(progress=False)
    for k, v in original.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not compressed.is_compressed(original)
    assert prepared[0].weight.data_ptr() != original[0].weight.data_ptr()
    assert torch.unique(prepared[3].weight[:4]).numel() <= 16 and not torch.equal(prepared[3].weight, original[3].weight)


def test_inplace_and_copy_give_the_same_weights_and_report(registry):
    a, b = model(), model()
    pa = KMeansPalettizer(a, grouped(), registry=registry)
    pb = KMeansPalettizer(b, grouped(), registry=registry)
    out_a, out_b = pa.prepare(progress=False), pb.prepare(inplace=True, progress=False)
    assert out_b is b and out_a is not a
    for (name, ta), tb in zip(out_a.state_dict().items(), out_b.state_dict().values()):
        assert torch.equal(ta, tb), name
    assert pa.report().to_dicts() == pb.report().to_dicts()


def test_tied_weights_copied_tied_and_recorded_on_every_owner(registry):
    emb = nn.Embedding(32, 8)
    head = nn.Linear(8, 32, bias=False)
    head.weight = emb.weight
    tied = nn.Sequential(emb, head)
    prepared = KMeansPalettizer(tied, grouped(group_size=8), registry=registry).prepare(progress=False)
    assert prepared[0].weight is prepared[1].weight
    assert compressed.records(prepared[0])["weight"] is compressed.records(prepared[1])["weight"]
    assert tied[0].weight is tied[1].weight and not compressed.is_compressed(tied)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("axis, scale", [(0, False), (0, True), (1, True)])
def test_dequantize_in_small_chunks_matches_a_direct_lookup(monkeypatch, dtype, axis, scale):
    monkeypatch.setattr(compressed, "_DEQUANTIZE_CHUNK", 40)  # chunks of a few rows, across LUT boundaries
    gen = torch.Generator().manual_seed(1)
    shape = (12, 8, 3)
    group = 4
    idx = torch.randint(0, 16, shape, generator=gen).to(torch.uint8)
    lut = torch.randn(shape[axis] // group, 16, 1, generator=gen)
    per_channel = torch.rand(shape[0], generator=gen) + 0.5 if scale else None
    spec = PalettizationSpec(n_bits=4, granularity=PerGroupedChannelGranularity(axis=axis, group_size=group))
    record = compressed.PalettizedTensor(lut=lut, indices=idx, spec=spec, shape=shape, dtype=dtype, axis=axis,
                                         per_channel_scale=per_channel)
    lut_of = (torch.arange(shape[axis]) // group).reshape([-1 if i == axis else 1 for i in range(3)])
    expected = lut[:, :, 0][lut_of.expand(shape), idx.long()]
    if per_channel is not None:
        expected = expected * per_channel.reshape(-1, 1, 1)
    dense = record.dequantize()
    assert dense.dtype == dtype and dense.is_contiguous() and torch.equal(dense, expected.to(dtype))


def test_report_sqnr_and_lut_values_without_sorting_the_weights():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 300, generator=gen)
    b = a + 0.01 * torch.randn(300, 300, generator=gen)
    exact = 10 * math.log10(a.double().pow(2).sum() / (a.double() - b.double()).pow(2).sum())
    assert sqnr_db(a, b) == pytest.approx(exact, abs=1e-3) and 39 < sqnr_db(a, b) < 41
    assert sqnr_db(a, a.clone()) == math.inf
    lut = torch.tensor([[[0.0], [1.0], [1.0], [2.0]], [[5.0], [5.0], [5.0], [5.0]]])  # padded LUTs repeat entries
    record = compressed.PalettizedTensor(lut=lut, indices=torch.zeros(8, 1, dtype=torch.uint8),
                                         spec=PalettizationSpec(n_bits=2), shape=(8, 1), dtype=torch.float32)
    assert lut_values(record) == 3


def test_all_finite_catches_nan_and_infinities_in_any_dtype():
    assert all_finite(torch.randn(4, 4)) and all_finite(torch.randn(4, 4).bfloat16()) and all_finite(torch.empty(0))
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(5, 5)
        t[2, 3] = bad
        assert not all_finite(t) and not all_finite(t.half())


def test_worker_processes_get_their_share_of_the_cores():
    cores = threads_per_worker(1)
    assert threads_per_worker(cores) == 1 and threads_per_worker(10 * cores) == 1
    with pytest.raises(ValueError, match="num_workers: expected a positive integer, got 0"):
        worker_pool(0)
    with worker_pool(2) as pool:
        assert pool.submit(torch.get_num_threads).result() == max(1, cores // 2)
