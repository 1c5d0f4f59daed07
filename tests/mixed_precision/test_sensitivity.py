"""compute_sensitivity: values, work done once, engines, cache/resume, validation."""

from __future__ import annotations

import concurrent.futures as cf
import json
import warnings

import pytest
import torch
from torch import nn

from bitsmith.config import PalettizationSpec
from bitsmith.errors import CompressionError, ConfigError, PluginError
from bitsmith.mixed_precision import EngineFallbackWarning, compute_sensitivity
from bitsmith.palettization import palettize_tensor
from bitsmith.sizes import palettized_size
from bitsmith_metrics import PSNR

from mp_helpers import Untraceable, make_resnetish, quantile_clusterer


def test_rows_sizes_and_scores(resnetish, images, registry):
    table = compute_sensitivity(resnetish, images, cache_dir=None, registry=registry)
    assert table.layer_names == ["stem", "block.0", "block.2", "head"]  # named_modules() order
    assert [(r.layer, r.candidate) for r in table.rows[:3]] == [("stem", "2-bit"), ("stem", "4-bit"), ("stem", "6-bit")]
    assert len(table.rows) == 12
    for row in table.rows:  # all-in sizes come from bitsmith.sizes
        expected = palettized_size(table.layer(row.layer).shape, row.spec)
        assert (row.bits, row.index_bits) == (expected.total_bits, expected.payload_bits)
    # one score recomputed by hand: compress block.2 at 4-bit, run the model, PSNR vs the reference
    model = make_resnetish()
    reference = torch.cat([model(x) for x in images]).detach()
    layer = model.block[2]
    record = palettize_tensor(layer.weight, PalettizationSpec(n_bits=4), quantile_clusterer)
    with torch.no_grad():
        layer.weight.copy_(record.dequantize())
    expected = PSNR().score(reference, torch.cat([model(x) for x in images]).detach())
    assert table.score("block.2", "4-bit") == expected
    row = table.row("block.2", "4-bit")
    assert row.distortion == pytest.approx(10 ** (-expected / 10))
    assert torch.equal(table.records[("block.2", "4-bit")].indices, record.indices)
    # sizes: everything that is not a scored weight is "uncompressed"
    all_bits = sum(p.numel() * 32 for p in resnetish.parameters()) + sum(
        b.numel() * 32 for b in resnetish.buffers() if b.is_floating_point())
    assert table.uncompressed_bits == all_bits - table.dense_bits
    # the model is left exactly as it was
    assert all(torch.equal(a, b) for a, b in zip(resnetish.state_dict().values(), make_resnetish().state_dict().values()))


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("engine", ["naive", "fast"])
def test_baseline_once_and_each_pair_clustered_once(resnetish, images, registry, test_plugin, engine):
    stem_calls = _count_calls(resnetish.stem)
    head_calls = _count_calls(resnetish.head)
    table = compute_sensitivity(resnetish, images, engine=engine, cache_dir=None, registry=registry)
    assert table.meta["engine"] == engine
    assert test_plugin.clusterer.calls == 12  # 4 layers x 3 candidates, one LUT each
    pairs, batches = 12, len(images)
    if engine == "naive":
        assert len(stem_calls) == batches * (1 + pairs)  # baseline + a full pass per pair
    else:
        # baseline + traced check + one walk, plus the stem's own 3 candidates: later layers never re-run the stem
        assert len(stem_calls) == batches * (3 + 3)
    assert len(head_calls) == batches * (1 + pairs) if engine == "naive" else batches * (1 + 1 + 1 + pairs)


def _same(a, b):
    return [(r.layer, r.candidate, r.bits, r.score) for r in a.rows] == [(r.layer, r.candidate, r.bits, r.score)
                                                                      for r in b.rows]


def test_fast_engine_equals_naive(resnetish, images, registry):
    fast = compute_sensitivity(resnetish, images, [2, 4, "2-bit g8"], engine="fast", cache_dir=None,
                               registry=registry)
    naive = compute_sensitivity(resnetish, images, [2, 4, "2-bit g8"], engine="naive", cache_dir=None,
                                registry=registry)
    assert fast.meta["engine"] == "fast" and naive.meta["engine"] == "naive"
    assert _same(fast, naive)  # bit-identical scores
    # the grouped candidate skips the 10-output head (10 channels not divisible by 8)
    assert [r.candidate for r in fast.rows_for("head")] == ["2-bit", "4-bit"]


def test_fast_engine_with_keyword_inputs_and_shared_weights(registry):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.mid = nn.Linear(8, 8)
            self.out = nn.Linear(8, 20, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids, scale=1.0):
            return self.out(torch.relu(self.mid(self.emb(ids))) * scale)

    torch.manual_seed(0)
    model = Tied().eval()
    data = [{"ids": torch.randint(0, 20, (4, 5))}, {"ids": torch.randint(0, 20, (4, 5)), "scale": 2.0}]
    fast = compute_sensitivity(model, data, engine="fast", cache_dir=None, registry=registry)
    naive = compute_sensitivity(model, data, engine="naive", cache_dir=None, registry=registry)
    assert fast.layer_names == ["emb", "mid"]  # the tied head is the embedding's tensor: listed once
    assert fast.meta["engine"] == "fast" and _same(fast, naive)


def test_untraceable_model_uses_the_block_engine(registry):
    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.randn(6, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto choosing another exact engine is not a warning
        auto = compute_sensitivity(model, x, cache_dir=None, registry=registry)
    assert auto.meta["engine"] == "block" and "torch.fx cannot trace it" in auto.meta["engine_notes"][0]
    naive = compute_sensitivity(model, x, engine="naive", cache_dir=None, registry=registry)
    assert _same(auto, naive)
    with pytest.warns(EngineFallbackWarning, match="torch.fx cannot trace it"):  # fast named explicitly
        fast = compute_sensitivity(model, x, engine="fast", cache_dir=None, registry=registry)
    assert fast.meta["engine"] == "naive" and _same(fast, naive)


def test_thread_pool_executor_gives_the_same_table(mlp, registry):
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    sequential = compute_sensitivity(mlp, x, cache_dir=None, registry=registry)
    with cf.ThreadPoolExecutor(2) as pool:
        pooled = compute_sensitivity(mlp, x, cache_dir=None, registry=registry, executor=pool)
    assert _same(sequential, pooled)


def test_cache_reuses_everything_and_only_adds_new_pairs(resnetish, images, registry, test_plugin, tmp_path):
    first = compute_sensitivity(resnetish, images, cache_dir=tmp_path, registry=registry)
    assert first.meta["pairs_scored"] == 12 and test_plugin.clusterer.calls == 12
    again = compute_sensitivity(resnetish, images, cache_dir=tmp_path, registry=registry)
    assert again.meta["pairs_scored"] == 0 and again.meta["engine"] == "cached"
    assert test_plugin.clusterer.calls == 12  # records came from disk
    assert _same(first, again)
    assert all(torch.equal(again.records[k].indices, first.records[k].indices) for k in first.records)
    more = compute_sensitivity(resnetish, images, [2, 4, 6, 3], cache_dir=tmp_path, registry=registry)
    assert more.meta["pairs_scored"] == 4 and test_plugin.clusterer.calls == 16
    # other data: a different run key, nothing reused
    other = compute_sensitivity(resnetish, images[:1], cache_dir=tmp_path, registry=registry)
    assert other.meta["pairs_scored"] == 12


@pytest.mark.parametrize("engine", ["naive", "fast"])
def test_interrupted_run_resumes_where_it_stopped(resnetish, images, registry, test_plugin, tmp_path, engine):
    test_plugin.flaky.fail_after = 5
    with pytest.raises(RuntimeError, match="simulated crash"):
        compute_sensitivity(resnetish, images, metric="flaky", engine=engine, cache_dir=tmp_path, registry=registry)
    assert all(torch.equal(a, b) for a, b in zip(resnetish.state_dict().values(),
                                                 make_resnetish().state_dict().values()))  # weights restored
    rows_file = next(tmp_path.glob("sensitivity/*/rows.jsonl"))
    assert len(rows_file.read_text().splitlines()) == 5
    with open(rows_file, "a") as fh:
        fh.write('{"layer": "stem", "pai')  # a torn last line is ignored
    test_plugin.flaky.fail_after = None
    test_plugin.flaky.calls = 0
    resumed = compute_sensitivity(resnetish, images, metric="flaky", engine=engine, cache_dir=tmp_path,
                                  registry=registry)
    assert test_plugin.flaky.calls == 12 - 5 and resumed.meta["pairs_scored"] == 7
    assert test_plugin.clusterer.calls == 12  # every record was clustered (and cached) before the crash
    fresh = compute_sensitivity(resnetish, images, metric="flaky", engine=engine, cache_dir=None, registry=registry)
    assert _same(resumed, fresh)
    meta = json.loads(next(tmp_path.glob("sensitivity/*/meta.json")).read_text())
    assert meta["metric"] == "flaky" and meta["schema_version"] == 1


def test_bad_inputs_fail_before_any_work(resnetish, images, registry, test_plugin):
    with pytest.raises(PluginError, match="no sensitivity metric named 'psnrr'; available: flaky, kl, mse, psnr"):
        compute_sensitivity(resnetish, images, metric="psnrr", cache_dir=None, registry=registry)
    with pytest.raises(ConfigError, match="engine: 'turbo' is not one of auto, fast, block, local, naive"):
        compute_sensitivity(resnetish, images, engine="turbo", cache_dir=None, registry=registry)
    with pytest.raises(ConfigError, match="candidate '4-bit gg': unknown token"):
        compute_sensitivity(resnetish, images, ["4-bit gg"], cache_dir=None, registry=registry)
    with pytest.raises(ConfigError, match="layers: 'nope' matches no palettizable layer"):
        compute_sensitivity(resnetish, images, layers="nope", cache_dir=None, registry=registry)
    with pytest.raises(ConfigError, match="data: the sensitivity stage needs input data"):
        compute_sensitivity(resnetish, None, cache_dir=None, registry=registry)
    with pytest.raises(CompressionError, match="(?s)layer .head. .*no candidate applies.*group_size 16"):
        compute_sensitivity(resnetish, images, ["2-bit g16"], cache_dir=None, registry=registry)
    with pytest.raises(PluginError, match="no palettizer named 'dkmx'"):
        compute_sensitivity(resnetish, images, palettizer="dkmx", cache_dir=None, registry=registry)
    assert test_plugin.clusterer.calls == 0


def test_layers_subset_and_regex(resnetish, images, registry):
    table = compute_sensitivity(resnetish, images, [4], layers=[r"block\..*"], cache_dir=None, registry=registry)
    assert table.layer_names == ["block.0", "block.2"]
    assert table.uncompressed_bits > 0


def test_warns_nothing_on_a_traceable_model(resnetish, images, registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_sensitivity(resnetish, images, cache_dir=None, registry=registry)
