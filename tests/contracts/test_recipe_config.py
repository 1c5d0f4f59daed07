"""``recipe.to_config()`` names each layer's algorithm; applied with ``palettize`` it reproduces ``apply_recipe``.

Every candidate kind the search can choose (plain k-means, grouped LUTs, per-channel
scales, ``@sensitive_kmeans``, ``@gptq``) is in one recipe; the config goes through
YAML, and the model from it equals the recipe's bit for bit (same calibration data).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitsmith import compressed
from bitsmith.config import ConfigError, KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, dump, load
from bitsmith.mixed_precision import Recipe, apply_recipe, compute_sensitivity
from bitsmith.mixed_precision.recipe import RecipeLayer
from bitsmith.palettization import palettize, split_by_algorithm

pytest.importorskip("bitsmith_kmeans")
pytest.importorskip("bitsmith_sensitive_kmeans")
pytest.importorskip("bitsmith_gptq")

KINDS = ["2-bit g8", "3-bit g8 @gptq", "4-bit +scale", "3-bit @sensitive_kmeans", "4-bit +scale @gptq", "4-bit"]


@pytest.fixture(autouse=True)
def _one_thread(torch_single_thread):
    yield


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _recipe_using_every_kind(table, kinds) -> Recipe:
    """Layer ``i`` gets ``kinds[i % len(kinds)]``: a recipe in which every kind is used."""
    layers = []
    for i, name in enumerate(table.layer_names):
        row = next(r for r in table.rows_for(name) if r.candidate == kinds[i % len(kinds)])
        layers.append(RecipeLayer(layer=name, tensor=table.layer(name).tensor, candidate=row.candidate, spec=row.spec,
                                  palettizer=row.palettizer, numel=row.numel, bits=row.bits,
                                  index_bits=row.index_bits, score=row.score, distortion=row.distortion))
    return Recipe(layers=layers, metric=table.metric, unit=table.unit, higher_is_better=table.higher_is_better,
                  search="by hand", target_bpw=4.0)


def _assert_same_model(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    ra = {(m, t): r for m, _, t, r in compressed.iter_records(a)}
    rb = {(m, t): r for m, _, t, r in compressed.iter_records(b)}
    assert ra.keys() == rb.keys() and ra
    for key, rec in ra.items():
        assert torch.equal(rec.indices, rb[key].indices) and torch.equal(rec.lut, rb[key].lut), key


def test_to_config_names_algorithms_and_reproduces_apply_recipe_bit_for_bit():
    model = _small_cnn()
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(8, 3, 8, 8, generator=gen)
    calibration = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(2)]  # disjoint from the scoring data
    table = compute_sensitivity(model, data, KINDS, metric="sqnr", cache_dir=None, calibration_data=calibration,
                                progress=False)
    recipe = _recipe_using_every_kind(table, KINDS)
    assert {e.candidate for e in recipe.layers} == set(KINDS)

    config = recipe.to_config()
    assert config.global_config is None and list(config.module_name_configs) == table.layer_names
    assert [c.algorithm for c in config.module_name_configs.values()] == [e.palettizer for e in recipe.layers]
    assert config.algorithms() == {"kmeans", "sensitive_kmeans", "gptq"}
    text = dump(config)
    assert "algorithm: gptq" in text and "algorithm: sensitive_kmeans" in text
    reloaded = load(text)
    assert reloaded == config

    from_records = apply_recipe(model, recipe, table=table)
    from_config = palettize(model, reloaded, calibration)
    _assert_same_model(from_records, from_config)
    _assert_same_model(from_records, apply_recipe(model, recipe, calibration_data=calibration))
    assert not compressed.is_compressed(model)


def test_a_single_algorithm_palettizer_refuses_a_config_naming_others():
    from bitsmith.palettization import KMeansPalettizer

    config = KMeansPalettizerConfig(module_name_configs={
        "0": ModuleKMeansPalettizerConfig(algorithm="kmeans"),
        "2": ModuleKMeansPalettizerConfig(algorithm="gptq")})
    assert {p.algorithm for p in split_by_algorithm(config)} == {"kmeans", "gptq"}
    with pytest.raises(ConfigError, match=r"module_name_configs\.2\.algorithm: 'gptq' is not 'kmeans'.*palettize"):
        KMeansPalettizer(_small_cnn(), config)


def test_per_layer_options_reach_the_algorithm():
    model = _small_cnn()
    calibration = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))]
    plain = {"op_state_spec": {"weight": {"n_bits": 2}}, "algorithm": "sensitive_kmeans"}
    config = load({"kmeans_palettization_config": {"global_config": None, "module_name_configs": {
        "0": plain, "2": {**plain, "options": {"outlier_fraction": 0.05}}}}})
    out = palettize(model, config, calibration)
    records = compressed.records
    assert records(out[0])["weight"].outliers is None
    outliers = records(out[2])["weight"].outliers
    assert outliers is not None and outliers.values.numel() == round(0.05 * model[2].weight.numel())


def test_mixed_algorithms_judge_coverage_on_the_whole_model():
    import warnings

    from bitsmith.coverage import LowCoverageWarning
    model = _small_cnn()
    calibration = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))]
    config = load({"kmeans_palettization_config": {
        "global_config": {"op_state_spec": {"weight": {"n_bits": 4}}},
        "module_name_configs": {"0": {"op_state_spec": {"weight": {"n_bits": 2}}, "algorithm": "sensitive_kmeans"}}}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = palettize(model, config, calibration)
    assert not [w for w in caught if issubclass(w.category, LowCoverageWarning)]
    assert len(list(compressed.iter_records(out))) == 6
    del config.module_name_configs["0"]
    config.global_config = None
    config.module_name_configs["0"] = ModuleKMeansPalettizerConfig(algorithm="sensitive_kmeans")
    config.module_name_configs["2"] = ModuleKMeansPalettizerConfig()
    with pytest.warns(LowCoverageWarning, match="stay uncompressed"):
        palettize(model, config, calibration)


@pytest.mark.slow
def test_to_config_reproduces_apply_recipe_on_mobilenet_v2():
    zoo = pytest.importorskip("bitsmith_zoo")
    model = zoo.load_mobilenet_v2().eval()
    data = zoo.image_crops(2, "heldout", size=64)
    calibration = [zoo.image_crops(2, "calibration", size=64)]  # disjoint photos
    layers = ["features.1.conv.1", "features.2.conv.0.0", "features.3.conv.1.0", "features.4.conv.2",
              "features.5.conv.0.0", "features.6.conv.2"]  # small layers (pointwise and depthwise): fast
    kinds = ["4-bit +scale @gptq", "3-bit @sensitive_kmeans", "2-bit g8", "4-bit +scale", "4-bit", "3-bit g8 @gptq"]
    table = compute_sensitivity(model, data, kinds, metric="sqnr", layers=layers, cache_dir=None,
                                calibration_data=calibration, progress=False)
    recipe = _recipe_using_every_kind(table, kinds)
    assert {e.candidate for e in recipe.layers} == set(kinds)
    config = load(dump(recipe.to_config()))
    _assert_same_model(apply_recipe(model, recipe, table=table), palettize(model, config, calibration))


def test_python_options_and_a_training_time_algorithm():
    pytest.importorskip("bitsmith_dkm")
    from bitsmith.errors import CompressionError
    from bitsmith_dkm import DKMOptions, DKMPalettizer
    from bitsmith_gptq import GPTQOptions

    gptq = ModuleKMeansPalettizerConfig(algorithm="gptq", options=GPTQOptions(damp=0.05, act_order=False))
    assert load(dump(KMeansPalettizerConfig(module_name_configs={"0": gptq}))).module_name_configs["0"] == gptq
    with pytest.raises(TypeError, match="options: expected a DKMOptions or a mapping"):
        ModuleKMeansPalettizerConfig(algorithm="dkm", options=GPTQOptions())

    model = _small_cnn()
    dkm = ModuleKMeansPalettizerConfig(algorithm="dkm", options=DKMOptions(temperature=0.1))
    alone = KMeansPalettizerConfig(module_name_configs={"0": dkm, "2": dkm})
    torch.manual_seed(0)
    via_config = palettize(model, alone).eval()
    direct = DKMPalettizer(model, {"dkm_palettization_config": {
        "module_name_configs": {"0": {}, "2": {}}, "dkm": {"temperature": 0.1}}}).prepare().eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(via_config(x), direct(x))
    mixed = KMeansPalettizerConfig(module_name_configs={"0": dkm, "2": ModuleKMeansPalettizerConfig(algorithm="kmeans")})
    with pytest.raises(CompressionError, match="palettizer 'dkm' attached no palettized record"):
        palettize(model, mixed)


def test_a_pipeline_palettize_step_runs_the_algorithm_each_scope_names(tmp_path):
    import bitsmith

    calibration = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))]
    config = {"global_config": {"op_state_spec": {"weight": {"n_bits": 4}}}, "module_name_configs": {
        "2": {"algorithm": "gptq", "op_state_spec": {"weight": {"n_bits": 3, "enable_per_channel_scale": True}}},
        "8": {"algorithm": "sensitive_kmeans", "options": {"outlier_fraction": 0.01}}}}
    pipeline = {"steps": [{"type": "palettize", "algorithm": "kmeans", "config": config}]}
    result = bitsmith.compress(_small_cnn(), pipeline, data=calibration, output_dir=tmp_path)
    expected = palettize(_small_cnn(), load({"kmeans_palettization_config": config}), calibration)
    _assert_same_model(result.model, expected)
    assert compressed.records(result.model[8])["weight"].outliers is not None
