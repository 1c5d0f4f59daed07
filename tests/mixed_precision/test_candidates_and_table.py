"""Candidates (labels, grids, validation) and the sensitivity table (printing, CSV/JSON round trips)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bitsmith.config import PalettizationSpec, PerGroupedChannelGranularity, QuantizationSpec
from bitsmith.errors import ConfigError
from bitsmith.mixed_precision import (
    Candidate,
    LayerInfo,
    SensitivityRow,
    SensitivityTable,
    candidate_grid,
    default_candidates,
    parse_candidate,
    resolve_candidates,
)


def test_default_candidates_are_seed_000s():
    assert [c.label for c in default_candidates()] == ["2-bit", "4-bit", "6-bit"]
    assert all(c.spec == PalettizationSpec(n_bits=c.spec.n_bits) for c in default_candidates())


@pytest.mark.parametrize("label", ["4-bit", "2-bit g16", "2-bit g8a1", "4-bit +scale", "4-bit cd2",
                                   "4-bit lut:int8", "3-bit g16 +scale @sensitive_kmeans"])
def test_labels_round_trip(label):
    cand = parse_candidate(label)
    assert cand.label == label
    assert parse_candidate(cand.label) == cand


def test_parse_fields():
    cand = parse_candidate("3 g16a1 lut:uint8 +scale@sensitive_kmeans")
    assert cand.spec == PalettizationSpec(n_bits=3, granularity=PerGroupedChannelGranularity(axis=1, group_size=16),
                                          lut_qspec=QuantizationSpec(dtype="uint8"), enable_per_channel_scale=True)
    assert cand.palettizer == "sensitive_kmeans"


@pytest.mark.parametrize("label, message", [("5-bit", "bit width '5-bit' is not one of 1, 2, 3, 4, 6, 8"),
                                            ("4-bit g", "unknown token 'g'"),
                                            ("", "expected a label"),
                                            ("4-bit g12 cd8", "cluster_dim: 8 must divide")])
def test_bad_labels(label, message):
    with pytest.raises(ConfigError, match=message):
        parse_candidate(label)


def test_resolve_accepts_mixed_forms_and_rejects_duplicates():
    out = resolve_candidates([2, "4-bit g16", PalettizationSpec(n_bits=6),
                              {"spec": {"n_bits": 8}, "label": "eight"}])
    assert [c.label for c in out] == ["2-bit", "4-bit g16", "6-bit", "eight"]
    with pytest.raises(ConfigError, match=r"candidates\[1\]: label '4-bit' repeats candidates\[0\]"):
        resolve_candidates([4, "4-bit"])
    with pytest.raises(ConfigError, match=r"candidates\[0\]: 5 is not one of"):
        resolve_candidates([5])
    with pytest.raises(ConfigError, match=r"candidates\[0\]\.spec\.n_bits: 5 is not one of"):
        resolve_candidates([{"spec": {"n_bits": 5}}])
    with pytest.raises(ConfigError, match=r"candidates\[0\]\.bits: unknown key"):
        resolve_candidates([{"bits": 4, "spec": {}}])
    with pytest.raises(TypeError, match="single"):
        resolve_candidates("4-bit")


def test_grid_and_keys():
    grid = candidate_grid((2, 4), group_sizes=(None, 16), per_channel_scale=(False, True))
    assert len(grid) == 8
    assert {c.label for c in grid} >= {"2-bit", "4-bit g16 +scale"}
    assert len({c.key() for c in grid}) == 8
    # the label is cosmetic: same spec and palettizer, same cache key
    assert Candidate(spec=PalettizationSpec(n_bits=4), label="x").key() == default_candidates()[1].key()
    assert Candidate(spec=PalettizationSpec(n_bits=4)).bound("kmeans").key() != default_candidates()[1].key()


def _table():
    layers = [LayerInfo("conv1", "weight", (64, 3, 7, 7), "float32"), LayerInfo("fc", "weight", (10, 64), "float32")]
    rows = []
    for info, scores in zip(layers, ([22.79, 31.64, 44.27], [30.0, math.inf, 50.0])):
        for b, s in zip((2, 4, 6), scores):
            from bitsmith.sizes import palettized_size

            size = palettized_size(info.shape, PalettizationSpec(n_bits=b))
            rows.append(SensitivityRow(layer=info.name, candidate=f"{b}-bit", spec=PalettizationSpec(n_bits=b),
                                       palettizer="kmeans", numel=info.numel, bits=size.total_bits,
                                       index_bits=size.payload_bits, score=s,
                                       distortion=0.0 if s == math.inf else 10 ** (-s / 10)))
    return SensitivityTable(rows=rows, layers=layers, metric="psnr", higher_is_better=True, unit="dB",
                            uncompressed_bits=1234, meta={"engine": "fast", "seconds": {"total": 1.5}})


def test_table_prints_like_seed_000():
    text = str(_table())
    lines = text.splitlines()
    assert lines[0].split() == ["Layer", "Config", "Size", "(KiB)", "Sensitivity", "(PSNR", "dB)"]
    assert lines[2].split() == ["conv1", "2-bit", "2.31", "22.79"]
    assert lines[3].split() == ["4-bit", "4.66", "31.64"]
    assert lines[4].split() == ["6-bit", "7.14", "44.27"]
    assert lines[6].split()[-1] == "inf"
    assert len(_table().head(1).format().splitlines()) == 5


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_table_round_trips(tmp_path, suffix):
    table = _table()
    path = table.save(tmp_path / f"t{suffix}")
    loaded = SensitivityTable.load(path)
    assert loaded == table
    assert loaded.row("fc", "4-bit").score == math.inf
    assert loaded.total_weights == 9408 + 640


def test_table_rejects_newer_schema_and_other_files(tmp_path):
    data = _table().to_dict()
    data["schema_version"] = 99
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="schema_version 99 is not supported"):
        SensitivityTable.load(tmp_path / "t.json")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a bitsmith sensitivity table"):
        SensitivityTable.load(tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="no such sensitivity table"):
        SensitivityTable.load(tmp_path / "missing.json")


def test_select_moves_dropped_layers_to_uncompressed():
    table = _table()
    sub = table.select(layers=["fc"], candidates=["2-bit", "6-bit"])
    assert sub.layer_names == ["fc"] and sub.candidates == ["2-bit", "6-bit"]
    assert sub.uncompressed_bits == 1234 + 9408 * 32
    with pytest.raises(KeyError, match="unknown candidate"):
        table.select(candidates=["3-bit"])


def test_layerinfo_dtype():
    assert LayerInfo("a", "weight", (2, 3), "float16").torch_dtype == torch.float16
