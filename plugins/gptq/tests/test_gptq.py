"""bitsmith-gptq: input statistics, GPTQ index assignment, scale refit, the palettizer, mixed-precision use."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitsmith
import bitsmith_gptq.plugin as gptq_plugin
from bitsmith.config import KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, PalettizationSpec
from bitsmith.errors import CompressionError
from bitsmith.palettization import Palettizer
from bitsmith.plugins import Registry
from bitsmith.sizes import model_size
from bitsmith_gptq import GPTQPalettizer, assign_indices, collect_input_stats, inverse_hessian_factor, refit_scales


pytestmark = pytest.mark.usefixtures("torch_single_thread")  # bitsmith.testing: tiny models, one thread


def quantile_kmeans(x, k, *, sample_weight=None, seed=None):
    """Deterministic stand-in for the kmeans clusterer: quantile centroids, nearest assignment."""
    x = torch.as_tensor(x, dtype=torch.float32)
    q = torch.quantile(x[:, 0], torch.linspace(0, 1, k))
    centroids = torch.unique(q).reshape(-1, 1)
    return centroids, torch.cdist(x, centroids).argmin(1)


class KMeansStandIn:
    @bitsmith.hookimpl
    def cluster(self, register):
        register("kmeans", quantile_kmeans)


@pytest.fixture
def registry() -> Registry:
    return Registry(autoload=False, plugins=[gptq_plugin, KMeansStandIn()])


class Net(nn.Module):
    """Conv -> ReLU -> depthwise conv -> ReLU -> pool -> Linear, plus an unused embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.fc = nn.Linear(16, 10)
        self.emb = nn.Embedding(5, 4)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def _config(spec: PalettizationSpec) -> KMeansPalettizerConfig:
    return KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec}))


# ---------------------------------------------------------------------- statistics


def test_input_stats_match_explicit_second_moments():
    model = _net()
    x = torch.randn(6, 3, 8, 8)
    stats = collect_input_stats(model, [("conv.weight", model.conv), ("dw.weight", model.dw),
                                        ("fc.weight", model.fc), ("emb.weight", model.emb)], [x[:4], x[4:]])
    assert stats.samples == 6 and sorted(stats.names()) == ["conv.weight", "dw.weight", "fc.weight"]
    cols = F.unfold(x, 3, padding=1).transpose(0, 1).reshape(27, -1).double()  # (27, B*L)
    torch.testing.assert_close(stats.hessian("conv.weight")[0], cols @ cols.T / cols.shape[1])
    h = torch.relu(model.conv(x)).detach()
    patches = F.unfold(h, 3, padding=1).reshape(6, 16, 9, 64).permute(1, 2, 0, 3).reshape(16, 9, -1).double()
    torch.testing.assert_close(stats.hessian("dw.weight"), patches @ patches.transpose(1, 2) / patches.shape[2])
    feats = torch.relu(model.dw(h)).mean((2, 3)).double()
    torch.testing.assert_close(stats.hessian("fc.weight")[0], feats.T @ feats / 6)
    with pytest.raises(KeyError, match="no calibration statistics for 'emb.weight'"):
        stats.hessian("emb.weight")


def test_conv1d_and_sample_limit():
    conv = nn.Conv1d(4, 6, 3, padding=1, stride=2)
    x = torch.randn(5, 4, 10)
    stats = collect_input_stats(conv, [("w", conv)], [x], num_samples=3)
    assert stats.samples == 3
    cols = F.unfold(x[:3].unsqueeze(2), (1, 3), padding=(0, 1), stride=(1, 2)).transpose(0, 1).reshape(12, -1)
    torch.testing.assert_close(stats.hessian("w")[0], (cols @ cols.T / cols.shape[1]).double())


# ---------------------------------------------------------------------- assignment


def test_identity_hessian_gives_nearest_values():
    torch.manual_seed(1)
    w = torch.randn(2, 5, 7)
    luts = torch.linspace(-2, 2, 8).expand(2, 5, 8)
    index = assign_indices(w, luts, inverse_hessian_factor(torch.eye(7).expand(2, 7, 7), damp=1e-9))
    assert torch.equal(index, (w.unsqueeze(-1) - luts.unsqueeze(2)).abs().argmin(-1))


def test_gptq_lowers_output_error_for_correlated_inputs_in_any_order():
    torch.manual_seed(2)
    x = torch.randn(400, 12) @ torch.randn(12, 12) + 0.5  # correlated, non-zero mean
    h = (x.T @ x / 400).double().unsqueeze(0)
    w = torch.randn(1, 20, 12).double()
    luts = torch.linspace(-2, 2, 4).double().expand(1, 20, 4)

    def out_err(index):
        q = torch.gather(luts, 2, index)
        e = (w - q)[0]
        return torch.einsum("rd,de,re->", e, h[0], e).item()

    nearest = (w.unsqueeze(-1) - luts.unsqueeze(2)).abs().argmin(-1)
    plain = assign_indices(w, luts, inverse_hessian_factor(h), block_size=5)
    order = torch.argsort(h[0].diagonal(), descending=True).unsqueeze(0)
    hp = h[:, order[0]][:, :, order[0]]
    ordered = assign_indices(w, luts, inverse_hessian_factor(hp), order=order, block_size=128)
    assert out_err(plain) < 0.7 * out_err(nearest)
    assert out_err(ordered) < 0.7 * out_err(nearest)
    # blocking is only a speed-up: the same choices with one block
    assert torch.equal(plain, assign_indices(w, luts, inverse_hessian_factor(h), block_size=12))
    with pytest.raises(ValueError, match="do not match"):
        assign_indices(w, luts[:, :3], inverse_hessian_factor(h))
    with pytest.raises(ValueError, match="damp"):
        inverse_hessian_factor(h, damp=0)


def test_refit_scales_minimise_output_error_and_keep_bad_fits():
    torch.manual_seed(3)
    h = torch.eye(4).double().unsqueeze(0) * 2
    w = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]]])
    q = torch.tensor([[[0.5, 1.0, 1.5, 2.0], [0.0, 0.0, 0.0, 0.0]]])
    fitted = refit_scales(w, q, h, torch.tensor([[1.0, 7.0]]))
    torch.testing.assert_close(fitted, torch.tensor([[2.0, 7.0]]))  # exact fit; zero row keeps its scale


# ---------------------------------------------------------------------- palettizer


@pytest.mark.parametrize("spec", [PalettizationSpec(n_bits=2),
                                  PalettizationSpec(n_bits=3, enable_per_channel_scale=True)])
def test_palettizer_keeps_luts_and_sizes_and_lowers_output_error(registry, spec):
    model = _net()
    calibration = torch.rand(16, 3, 8, 8)
    plain = Palettizer(model, _config(spec), registry=registry).prepare()  # plain k-means, same clusterer
    palettizer = GPTQPalettizer(model, _config(spec), registry=registry, weighted_luts=False)
    palettizer.calibrate(calibration)
    small = palettizer.prepare()
    assert model_size(small).total == model_size(plain).total
    assert set(palettizer.skipped) == {"emb.weight"}
    from bitsmith import compressed

    for name in ("conv", "dw", "fc"):
        a, b = compressed.records(small.get_submodule(name))["weight"], compressed.records(plain.get_submodule(name))["weight"]
        assert torch.equal(a.lut, b.lut)
    with torch.no_grad():
        ref, x = model(calibration), calibration
        err_gptq = (small(x) - ref).pow(2).mean().item()
        err_plain = (plain(x) - ref).pow(2).mean().item()
    assert err_gptq < 0.5 * err_plain


def test_prepare_takes_calibration_and_errors_are_clear(registry):
    model = _net()
    with pytest.raises(CompressionError, match="needs calibration"):
        GPTQPalettizer(model, _config(PalettizationSpec(n_bits=2)), registry=registry).prepare()
    small = GPTQPalettizer(model, _config(PalettizationSpec(n_bits=2)), registry=registry).prepare(
        torch.rand(4, 3, 8, 8))
    assert bitsmith.compressed.is_compressed(small)
    with pytest.raises(ValueError, match=r"damp: expected a number in \(0, 1\]"):
        GPTQPalettizer(model, registry=registry, damp=0)
    with pytest.raises(TypeError, match="act_order"):
        GPTQPalettizer(model, registry=registry, act_order="yes")
    with pytest.raises(ValueError, match="data: calibration batches"):
        GPTQPalettizer(model, registry=registry).calibrate(None)


def test_mixed_precision_candidate_through_the_default_registry():
    pytest.importorskip("bitsmith_kmeans")
    from bitsmith.mixed_precision import apply_recipe, compute_sensitivity, generate_recipe

    model = _net()
    data = torch.rand(8, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = compute_sensitivity(model, data, ["2-bit", "2-bit @gptq", "4-bit @gptq"], metric="mse",
                                    cache_dir=None, layers=["conv", "dw", "fc"])
    assert {r.candidate for r in table.rows} == {"2-bit", "2-bit @gptq", "4-bit @gptq"}
    for layer in ("conv", "fc"):
        assert table.score(layer, "2-bit @gptq") < table.score(layer, "2-bit")  # same size, lower output error
        assert table.row(layer, "2-bit @gptq").bits == table.row(layer, "2-bit").bits
    recipe = generate_recipe(table, target_bpw=3, search="optimal")
    small = apply_recipe(model, recipe, table=table)
    assert model_size(small).compressed.bpw <= 3


def test_weighted_luts_follow_the_input_energy():
    pytest.importorskip("bitsmith_kmeans")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32)).eval()
    energy = torch.tensor([10.0, 5.0] + [0.1] * 14)  # two loud input features, fourteen quiet ones
    calibration = torch.randn(256, 16) * energy
    config = _config(PalettizationSpec(n_bits=2))
    errors = {}
    for weighted in (False, True):
        palettizer = GPTQPalettizer(model, config, weighted_luts=weighted)
        palettizer.calibrate(calibration)
        item = palettizer.plan()[0]
        weights = palettizer.sample_weight(item)
        if weighted:  # H_jj of each weight's input column, the same for every output row
            assert weights.shape == (32, 16) and torch.equal(weights[0], weights[31])
            assert weights[0, 0] > 50 * weights[0, 5]
        else:
            assert weights is None
        with torch.no_grad():
            errors[weighted] = (palettizer.prepare()(calibration) - model(calibration)).pow(2).mean().item()
    assert errors[True] < 0.9 * errors[False]  # 0.146 vs 0.167 (seeded)


def test_sensitivity_cache_is_keyed_by_the_calibration_data(tmp_path):
    pytest.importorskip("bitsmith_kmeans")
    from bitsmith.mixed_precision import compute_sensitivity

    model, data = _net(), torch.rand(4, 3, 8, 8)
    calibration = [torch.rand(8, 3, 8, 8), torch.rand(8, 3, 8, 8)]

    def table(calib):
        return compute_sensitivity(model, data, ["2-bit @gptq"], metric="mse", cache_dir=tmp_path,
                                   layers=["conv", "fc"], calibration_data=calib)

    first = table(calibration)
    assert first.meta["pairs_scored"] == 2
    assert table(iter(calibration)).meta["pairs_scored"] == 0  # same batches (a generator is fine): cached
    other = table([torch.rand(8, 3, 8, 8)])
    assert other.meta["pairs_scored"] == 2  # other calibration data: other GPTQ records, not the cached ones
    assert table(None).meta["pairs_scored"] == 2  # calibrated on the scoring data


def test_sensitivity_cache_is_keyed_by_the_options_of_a_ready_instance(tmp_path):
    pytest.importorskip("bitsmith_kmeans")
    from bitsmith.mixed_precision import compute_sensitivity

    model, data = _net(), torch.rand(8, 3, 8, 8)

    def table(**options):
        return compute_sensitivity(model, data, ["2-bit @gptq"], metric="mse", cache_dir=tmp_path,
                                   layers=["conv", "fc"], palettizers={"gptq": GPTQPalettizer(model, **options)})

    plain = table(weighted_luts=False)
    assert plain.meta["pairs_scored"] == 2
    assert table(weighted_luts=False).meta["pairs_scored"] == 0  # same options: cached
    weighted = table(weighted_luts=True)
    assert weighted.meta["pairs_scored"] == 2  # other options under the same name: never the cached scores
    assert weighted.score("fc", "2-bit @gptq") != plain.score("fc", "2-bit @gptq")
    assert table(weighted_luts=False, damp=0.5).meta["pairs_scored"] == 2


def test_float32_assignment_matches_float64():
    """The column loop runs in the weight's precision (float32 here); float64 gives the same choices."""
    torch.manual_seed(4)
    x = torch.randn(500, 48) @ torch.randn(48, 48) + 0.3
    h = (x.T.double() @ x.double() / 500).unsqueeze(0)
    w = torch.randn(1, 64, 48)
    luts = torch.linspace(-2, 2, 8).expand(1, 64, 8)
    factor = inverse_hessian_factor(h)
    single = assign_indices(w, luts, factor, block_size=16)
    double = assign_indices(w.double(), luts.double(), factor, block_size=16)
    assert single.dtype == torch.long and single.device == w.device
    assert (single == double).float().mean().item() > 0.99

    def out_err(index):
        e = (w.double() - torch.gather(luts.double(), 2, index))[0]
        return torch.einsum("rd,de,re->", e, h[0], e).item()

    assert out_err(single) == pytest.approx(out_err(double), rel=0.01)
    fitted = refit_scales(w, torch.gather(luts, 2, single), h, torch.ones(1, 64))
    assert fitted.dtype == torch.float32
    torch.testing.assert_close(fitted, refit_scales(w.double(), torch.gather(luts, 2, single).double(), h,
                                                    torch.ones(1, 64, dtype=torch.float64)).float())
