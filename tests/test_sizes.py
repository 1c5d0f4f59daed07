"""Size accounting: hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bitsmith import compressed
from bitsmith.config import (
    PalettizationSpec,
    PerBlockGranularity,
    PerChannelGranularity,
    PerGroupedChannelGranularity,
    QuantizationSpec,
)
from bitsmith.palettization import palettize_tensor
from bitsmith.sizes import dense_size, format_kib, format_mib, model_size, palettized_size, quantized_size, record_size


@pytest.mark.parametrize("n_bits, kib", [(2, "2.31"), (4, "4.66"), (6, "7.14")])
def test_design_doc_check_9408_weight_conv(n_bits, kib):
    size = palettized_size((64, 3, 7, 7), PalettizationSpec(n_bits=n_bits))
    assert size.numel == 9408
    assert format_kib(size.total_bits) == kib
    assert size.payload_bits == 9408 * n_bits and size.overhead_bits == 2**n_bits * 32


def test_seed_000_second_layer_sizes():
    sizes = [palettized_size((64, 64, 1, 1), PalettizationSpec(n_bits=b)).kib for b in (2, 4, 6)]
    assert [f"{s:.2f}" for s in sizes] == ["1.02", "2.06", "3.25"]


def test_grouped_vector_lut_quant_and_scales():
    spec = PalettizationSpec(n_bits=3, granularity=PerGroupedChannelGranularity(axis=0, group_size=16), cluster_dim=2,
                             lut_qspec=QuantizationSpec(dtype="uint8", qscheme="asymmetric"),
                             enable_per_channel_scale=True)
    size = palettized_size((64, 32), spec, torch.float16)
    luts = 64 // 16
    assert size.payload_bits == (64 * 32 // 2) * 3
    assert size.overhead_bits == luts * 8 * 2 * 8 + luts * 16 + luts * 8 + 64 * 16
    assert size.bpw == pytest.approx(size.total_bits / 2048)


def test_quantized_sizes():
    per_channel = quantized_size((32, 16), QuantizationSpec(dtype="int8", granularity=PerChannelGranularity(axis=0)))
    assert (per_channel.payload_bits, per_channel.overhead_bits) == (32 * 16 * 8, 32 * 32)
    block = quantized_size((32, 64), QuantizationSpec(dtype="int4", qscheme="asymmetric",
                                                      granularity=PerBlockGranularity(axis=1, block_size=16)))
    assert block.payload_bits == 32 * 64 * 4 and block.overhead_bits == 32 * 4 * (32 + 4)


def test_record_size_equals_spec_size_and_model_totals(quantile_clusterer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8))
    spec = PalettizationSpec(n_bits=4, granularity=PerGroupedChannelGranularity(axis=0, group_size=8))
    record = palettize_tensor(model[0].weight, spec, quantile_clusterer)
    compressed.apply(model[0], "weight", record)
    assert record_size(record) == palettized_size((32, 16), spec)
    totals = model_size(model)
    assert totals.compressed == palettized_size((32, 16), spec)
    assert totals.uncompressed.total_bits == (32 + 8 * 32 + 8) * 32
    assert totals.bpw == pytest.approx((512 * 4 + 4 * 16 * 32) / 512)
    assert format_mib(totals.total.total_bits) == f"{totals.mib:.2f}"


def test_shared_tensors_count_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    assert model_size(model).total == dense_size((10, 4))
