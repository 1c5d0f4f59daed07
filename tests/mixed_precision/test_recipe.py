"""generate_recipe, greedy vs optimal, recipe files, configs and applying a recipe."""

from __future__ import annotations

import itertools
import math
import random

import attrs
import pytest
import torch

from bitsmith.config import KMeansPalettizerConfig, PalettizationSpec, dump, load
from bitsmith.errors import ConfigError
from bitsmith.mixed_precision import (
    LayerInfo,
    Recipe,
    SensitivityRow,
    SensitivityTable,
    apply_recipe,
    compute_sensitivity,
    generate_recipe,
)
from bitsmith.sizes import model_size

from mp_helpers import StubKMeansPalettizer


def table_from(costs, dists, numel=100):
    """A table whose option j of layer i costs costs[i][j] bits and distorts dists[i][j] (PSNR scores)."""
    layers = [LayerInfo(f"l{i}", "weight", (numel,), "float32") for i in range(len(costs))]
    rows = []
    for info, cs, ds in zip(layers, costs, dists):
        for j, (c, d) in enumerate(zip(cs, ds)):
            rows.append(SensitivityRow(layer=info.name, candidate=f"opt{j}", spec=PalettizationSpec(n_bits=2),
                                       palettizer="kmeans", numel=numel, bits=int(c), index_bits=int(c),
                                       score=-10 * math.log10(d) if d > 0 else math.inf, distortion=d))
    return SensitivityTable(rows=rows, layers=layers, metric="psnr", higher_is_better=True, unit="dB")


def brute_force(table, budget):
    options = [table.rows_for(name) for name in table.layer_names]
    best = math.inf
    for combo in itertools.product(*options):
        if sum(r.bits for r in combo) <= budget:
            best = min(best, sum(r.distortion for r in combo))
    return best


def test_optimal_strictly_better_than_greedy_on_a_crafted_table(registry):
    # greedy buys l0's upgrade first (0.01 distortion saved per bit vs 0.0095) and cannot afford l1's
    table = table_from([[100, 200], [100, 1100]], [[1.0, 0.0], [9.5, 0.0]])
    budget_bpw = 1200 / 200
    greedy = generate_recipe(table, target_bpw=budget_bpw, search="greedy", registry=registry)
    optimal = generate_recipe(table, target_bpw=budget_bpw, search="optimal", registry=registry)
    assert [e.candidate for e in greedy.layers] == ["opt1", "opt0"]
    assert [e.candidate for e in optimal.layers] == ["opt0", "opt1"]
    assert greedy.predicted_distortion == pytest.approx(9.5)
    assert optimal.predicted_distortion == pytest.approx(1.0)
    assert optimal.predicted_score > greedy.predicted_score  # PSNR: 0 dB vs -9.8 dB
    assert greedy.bits <= greedy.budget_bits and optimal.bits <= optimal.budget_bits


@pytest.mark.parametrize("seed", range(25))
def test_optimal_is_exact_and_never_worse_than_greedy_on_random_tables(registry, seed):
    rng = random.Random(seed)
    n_layers, n_opts = rng.randint(2, 6), rng.randint(2, 4)
    costs = [sorted(rng.sample(range(50, 900), n_opts)) for _ in range(n_layers)]
    dists = [[rng.uniform(0, 1) * 2 ** (-c / 200) for c in cs] for cs in costs]
    table = table_from(costs, dists)
    lo, hi = sum(min(c) for c in costs), sum(max(c) for c in costs)
    bpw = (lo + rng.random() * (hi - lo)) / table.total_weights
    greedy = generate_recipe(table, target_bpw=bpw, search="greedy", registry=registry)
    optimal = generate_recipe(table, target_bpw=bpw, search="optimal", registry=registry)
    assert optimal.bits <= bpw * table.total_weights
    assert optimal.predicted_distortion <= greedy.predicted_distortion
    assert optimal.predicted_distortion == pytest.approx(brute_force(table, bpw * table.total_weights), rel=1e-12)


def test_targets_and_errors(registry):
    table = table_from([[200, 400], [200, 400]], [[1.0, 0.1], [1.0, 0.2]])
    recipe = generate_recipe(table, target_bpw=3, registry=registry)  # 600 bits for 200 weights
    assert recipe.bits == 600 and recipe.bpw == 3.0 and recipe.budget_bits == 600
    assert [e.candidate for e in recipe.layers] == ["opt1", "opt0"]
    by_size = generate_recipe(table, target_size=600 / 8 / 2**20, registry=registry)
    assert [e.candidate for e in by_size.layers] == ["opt1", "opt0"] and by_size.target_size_mib is not None
    with pytest.raises(ValueError, match=r"target_bpw 1 is below the smallest recipe of this table: 2.000 BPW all-in"):
        generate_recipe(table, target_bpw=1, registry=registry)
    with pytest.raises(ConfigError, match="exactly one of target_bpw"):
        generate_recipe(table, target_bpw=3, target_size=1, registry=registry)
    with pytest.raises(ConfigError, match="target_bpw: expected a positive number"):
        generate_recipe(table, target_bpw=-1, registry=registry)


def test_non_finite_scores_are_avoided(registry):
    # a NaN score (e.g. a diverged output) must never be preferred
    table = table_from([[100, 200], [100, 200]], [[1.0, 0.5], [1.0, 0.5]])
    table.rows[1] = attrs.evolve(table.rows[1], score=math.nan, distortion=math.inf)
    recipe = generate_recipe(table, target_bpw=3, search="optimal", registry=registry)
    assert [e.candidate for e in recipe.layers] == ["opt0", "opt1"]


@pytest.fixture
def real_table(resnetish, images, registry):
    return compute_sensitivity(resnetish, images, [2, 4, 6, "4-bit g8 +scale"], cache_dir=None, registry=registry)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_recipe_round_trip(real_table, registry, tmp_path, suffix):
    recipe = generate_recipe(real_table, target_bpw=4.5, search="optimal", registry=registry)
    loaded = Recipe.load(recipe.save(tmp_path / f"recipe{suffix}"))
    assert loaded == recipe
    assert loaded.to_config().module_name_configs == recipe.to_config().module_name_configs
    text = (tmp_path / f"recipe{suffix}").read_text()
    assert "schema_version" in text and "bitsmith_recipe" in text


def test_recipe_file_errors(tmp_path):
    (tmp_path / "r.yaml").write_text("bitsmith_recipe: {schema_version: 7}\n")
    with pytest.raises(ConfigError, match="schema_version 7 is not supported"):
        Recipe.load(tmp_path / "r.yaml")
    (tmp_path / "x.yaml").write_text("hello: 1\n")
    with pytest.raises(ConfigError, match="not a bitsmith recipe"):
        Recipe.load(tmp_path / "x.yaml")


def test_to_config_apply_and_sizes_agree(resnetish, real_table, registry):
    recipe = generate_recipe(real_table, target_bpw=4.5, search="greedy", registry=registry)
    config = recipe.to_config()
    assert isinstance(config, KMeansPalettizerConfig) and config.global_config is None
    assert list(config.module_name_configs) == real_table.layer_names
    assert load(dump(config)) == config  # a valid, round-tripping config
    # applying the cached records == running the palettizer on the config
    applied = apply_recipe(resnetish, recipe, table=real_table, registry=registry)
    palettized = StubKMeansPalettizer(resnetish, config, registry=registry).prepare()
    for (name, a), b in zip(applied.state_dict().items(), palettized.state_dict().values()):
        assert torch.equal(a, b), name
    size = model_size(applied)
    assert size.mib == pytest.approx(recipe.size_mib, abs=1e-12)
    assert size.bpw == pytest.approx(recipe.bpw) and size.bpw_index == pytest.approx(recipe.bpw_index)
    # without the table, apply_recipe clusters through the registry and gets the same model
    again = apply_recipe(resnetish, recipe, registry=registry)
    assert all(torch.equal(a, b) for a, b in zip(applied.state_dict().values(), again.state_dict().values()))
    assert not any(torch.equal(a, b) for a, b in zip(applied.stem.parameters(), resnetish.stem.parameters())
                   if a.dim() > 1)  # the original is untouched, the copy compressed


def test_summary_lists_the_bit_distribution(real_table, registry):
    recipe = generate_recipe(real_table, target_bpw=4, registry=registry)
    text = recipe.summary()
    counts = {label: len(names) for label, names in recipe.distribution().items()}
    assert sum(counts.values()) == 4
    for label, n in counts.items():
        assert f"{n} layer" in text and label in text
    assert f"{recipe.bpw:.3f} all-in" in text and "greedy recipe, target 4 BPW" in text


def test_sensitive_kmeans_candidates_through_the_default_registry():
    pytest.importorskip("bitsmith_sensitive_kmeans")
    pytest.importorskip("bitsmith_kmeans")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    x = torch.randn(32, 16)
    table = compute_sensitivity(model, x, ["3-bit", "3-bit @sensitive_kmeans"], cache_dir=None)
    assert table.candidates == ["3-bit", "3-bit @sensitive_kmeans"]
    assert [r.palettizer for r in table.rows_for("0")] == ["kmeans", "sensitive_kmeans"]
    # Fisher-weighted clustering gives other LUTs than plain k-means
    assert not torch.equal(table.records[("0", "3-bit")].lut, table.records[("0", "3-bit @sensitive_kmeans")].lut)
    recipe = generate_recipe(table.select(candidates=["3-bit @sensitive_kmeans"]), target_bpw=8)
    assert set(recipe.to_configs()) == {"sensitive_kmeans"}
    from_records = apply_recipe(model, recipe, table=table)
    reclustered = apply_recipe(model, recipe, calibration_data=[x])  # calibrates SKM on the same data
    for a, b in zip(from_records.state_dict().values(), reclustered.state_dict().values()):
        assert torch.equal(a, b)
