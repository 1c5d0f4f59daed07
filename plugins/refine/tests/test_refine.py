"""bitsmith-refine: LUT/scale refinement keeps the layout and size and lowers the output error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitsmith
import bitsmith_refine.plugin as refine_plugin
from bitsmith import compressed
from bitsmith.config import KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, PalettizationSpec
from bitsmith.errors import CompressionError
from bitsmith.palettization import Palettizer
from bitsmith.plugins import Registry
from bitsmith.sizes import model_size
from bitsmith.testing import check_palettizer
from bitsmith.testing.kernels import quantile_clusterer
from bitsmith_refine import LOSSES, RefineOptions, RefinePalettizer, refine

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class KMeansStandIn:
    @bitsmith.hookimpl
    def cluster(self, register):
        register("kmeans", quantile_clusterer)

    @bitsmith.hookimpl
    def palettizer(self, register):  # the scopes of a mixed config that name no algorithm
        register("kmeans", Palettizer)


@pytest.fixture
def registry() -> Registry:
    return Registry(autoload=False, plugins=[refine_plugin, KMeansStandIn()])


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def _config(n_bits: int, scale: bool) -> KMeansPalettizerConfig:
    return KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(
        n_bits=n_bits, enable_per_channel_scale=scale)}))


def _data(seed: int, n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 8, 8, generator=gen) for _ in range(n)]


def _kl(reference: nn.Module, model: nn.Module, batches: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return sum(LOSSES["kl"](reference(b), model(b)).item() for b in batches) / len(batches)


@pytest.mark.parametrize("scale", [False, True])
def test_refine_keeps_indices_and_size_and_lowers_held_out_kl(registry, scale) -> None:
    model = _net()
    small = Palettizer(model, _config(2, scale), registry=registry).prepare()
    before = {n: r for n, _, _, r in compressed.iter_records(small)}
    result = refine(small, model, _data(1), validation=_data(2), options=RefineOptions(steps=60, lr=1e-2))
    refined = result.model
    assert refined is not small and result.refined == ("0.weight", "2.weight", "6.weight") and result.skipped == {}
    assert model_size(refined) == model_size(small)
    for name, module, tensor, record in compressed.iter_records(refined):
        old = before[name]
        assert torch.equal(record.indices, old.indices) and record.lut.shape == old.lut.shape
        assert torch.equal(getattr(module, tensor), record.dequantize())  # the weight in effect is the record's
        assert (record.per_channel_scale is None) == (not scale)
    assert not torch.equal(before["6"].lut, dict((n, r) for n, _, _, r in compressed.iter_records(refined))["6"].lut)
    assert 0 < result.best_step <= 60 and result.loss_after < 0.8 * result.loss_before
    held_out = _data(3)
    assert _kl(model, refined, held_out) < 0.8 * _kl(model, small, held_out)  # data neither step saw
    assert result.parameters == sum(r.lut.numel() + (r.shape[0] if scale else 0) for r in before.values())
    assert result.seconds > 0 and result.peak_rss_mib > 0
    assert all(p.requires_grad and p.grad is None for p in refined.parameters())  # left as found, no stray grads


def test_refine_keeps_the_model_when_no_step_helps(registry) -> None:
    model = _net()
    small = Palettizer(model, _config(4, False), registry=registry).prepare()
    result = refine(small, model, _data(1, 1), options=RefineOptions(steps=2, lr=50.0, eval_every=1))
    assert result.best_step == 0 and result.loss_after == result.loss_before
    for (_, m1, t1, r1), (_, m2, t2, r2) in zip(compressed.iter_records(small), compressed.iter_records(result.model)):
        assert torch.equal(r1.lut, r2.lut) and torch.equal(getattr(m1, t1), getattr(m2, t2))


def test_refine_mse_loss_and_inplace(registry) -> None:
    model = _net()
    small = Palettizer(model, _config(2, True), registry=registry).prepare()
    result = refine(small, model, _data(1), options=RefineOptions(steps=20, lr=1e-2, loss="mse", train_luts=False),
                    inplace=True)
    assert result.model is small and result.loss_after < result.loss_before
    assert result.parameters == 16 + 16 + 10  # scales only


def test_refine_rejects_bad_input_before_work(registry) -> None:
    model = _net()
    with pytest.raises(ValueError, match="no palettized tensor to refine"):
        refine(model, model, _data(1))
    small = Palettizer(model, _config(2, False), registry=registry).prepare()
    with pytest.raises(ValueError, match="data: at least one"):
        refine(small, model, [])
    with pytest.raises(TypeError, match="options: expected RefineOptions"):
        refine(small, model, _data(1), options={"steps": 3})
    for kwargs, message in (({"steps": 0}, "steps: expected a positive integer, got 0"),
                            ({"lr": -1.0}, "lr: expected a positive number"),
                            ({"loss": "l1"}, "loss: 'l1' is not one of kl, mse"),
                            ({"train_luts": False, "train_scales": False}, "at least one must be True")):
        with pytest.raises(ValueError, match=message):
            RefineOptions(**kwargs)


def test_refine_palettizer_is_registered_and_conforms(registry) -> None:
    assert registry.get("palettizer", "refine") is RefinePalettizer
    check_palettizer(RefinePalettizer, registry=registry)
    model = _net()
    palettizer = RefinePalettizer(model, _config(2, True), registry=registry, options=RefineOptions(steps=30, lr=1e-2))
    with pytest.raises(CompressionError, match="needs calibration batches"):
        palettizer.prepare()
    small = palettizer.prepare(_data(1))
    assert palettizer.result.model is small and palettizer.result.loss_after < palettizer.result.loss_before


def _moves(start: nn.Module, refined: nn.Module) -> float:
    old = {n: r for n, _, _, r in compressed.iter_records(start)}
    return sum((r.lut - old[n].lut).square().sum().item() for n, _, _, r in compressed.iter_records(refined))


def test_refine_draws_a_fresh_batch_per_step_from_an_iterator(registry) -> None:
    model = _net()
    small = Palettizer(model, _config(2, True), registry=registry).prepare()
    drawn = []

    def stream():
        gen = torch.Generator().manual_seed(5)
        for _ in range(25):  # runs out before the 40 steps asked for
            drawn.append(torch.randn(8, 3, 8, 8, generator=gen))
            yield drawn[-1]

    with pytest.raises(ValueError, match="validation: batches are needed when data is an iterator"):
        refine(small, model, stream())
    assert drawn == []  # refused before drawing anything
    result = refine(small, model, stream(), validation=_data(2), options=RefineOptions(steps=40, lr=1e-2))
    assert result.steps == 25 and len(drawn) == 25 and len({b.sum().item() for b in drawn}) == 25
    assert result.best_step in (10, 20, 25) and result.loss_after < 0.8 * result.loss_before
    assert [s for s, _ in result.history] == [0, 10, 20, 25] and result.history[0][1] == result.loss_before
    assert min(v for _, v in result.history) == result.loss_after
    assert _kl(model, result.model, _data(3)) < 0.8 * _kl(model, small, _data(3))


def test_anchor_keeps_the_values_near_their_start(registry) -> None:
    model = _net()
    small = Palettizer(model, _config(2, False), registry=registry).prepare()
    free = refine(small, model, _data(1), validation=_data(2), options=RefineOptions(steps=40, lr=1e-2))
    held = refine(small, model, _data(1), validation=_data(2), options=RefineOptions(steps=40, lr=1e-2, anchor=30.0))
    assert free.best_step and held.best_step
    assert _moves(small, held.model) < 0.3 * _moves(small, free.model)
    assert held.loss_after < held.loss_before  # still improves, within the trust region


def test_feature_matching_lowers_held_out_kl_and_removes_its_hooks(registry) -> None:
    model = _net()
    small = Palettizer(model, _config(2, True), registry=registry).prepare()
    result = refine(small, model, _data(1), validation=_data(2),
                    options=RefineOptions(steps=40, lr=1e-2, feature_weight=1.0))
    assert result.best_step and _kl(model, result.model, _data(3)) < 0.8 * _kl(model, small, _data(3))
    plain = refine(small, model, _data(1), validation=_data(2),
                   options=RefineOptions(steps=40, lr=1e-2, feature_weight=0.0))
    assert _moves(plain.model, result.model) > 0  # the layer targets changed the fit
    for m in (*model.modules(), *result.model.modules()):
        assert not m._forward_hooks
    other = nn.Sequential(nn.Linear(3, 3))  # has no layer "2": refused before any work
    with pytest.raises(ValueError, match="reference: has no module '2'"):
        refine(small, other, _data(1), options=RefineOptions(feature_weight=1.0))
    with pytest.raises(ValueError, match="anchor: expected a non-negative number"):
        RefineOptions(anchor=-1.0)
    with pytest.raises(ValueError, match="feature_weight: expected a non-negative number"):
        RefineOptions(feature_weight=float("nan"))


MIXED_YAML = """
kmeans_palettization_config:
  global_config: {op_state_spec: {weight: {n_bits: 2, enable_per_channel_scale: true}}}
  module_name_configs:
    '6':
      algorithm: refine
      options: {steps: 30, lr: 0.01, anchor: 0.5}
      op_state_spec: {weight: {n_bits: 2, enable_per_channel_scale: true}}
"""


def test_a_config_names_refine_with_its_options_per_layer(registry) -> None:
    from bitsmith.config import ConfigError, load
    from bitsmith.palettization import palettize
    from bitsmith_refine import RefinePalettizerConfig

    config = load(MIXED_YAML)
    assert config.module_name_configs["6"].options == RefineOptions(steps=30, lr=0.01, anchor=0.5)
    model = _net()
    plain = Palettizer(model, _config(2, True), registry=registry).prepare()
    mixed = palettize(model, config, example_inputs=_data(1), registry=registry)
    kmeans = {n: r for n, _, _, r in compressed.iter_records(plain)}
    for name, _, _, record in compressed.iter_records(mixed):  # only layer 6 refined, the rest as k-means left it
        assert torch.equal(record.indices, kmeans[name].indices)
        assert torch.equal(record.lut, kmeans[name].lut) == (name != "6")
    assert _kl(model, mixed, _data(3)) < _kl(model, plain, _data(3))
    own = RefinePalettizer(model, load("refine_palettization_config:\n  refine: {steps: 7, feature_weight: 1.0}\n"),
                           registry=registry)
    assert isinstance(own.config, RefinePalettizerConfig) and own.options == RefineOptions(steps=7, feature_weight=1.0)
    with pytest.raises(ConfigError, match=r"refine_palettization_config\.refine\.steps: expected a positive integer"):
        load("refine_palettization_config:\n  refine: {steps: 0}\n")
