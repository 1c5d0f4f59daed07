"""DKMPalettizer: prepare/train/finalize, records, config errors, registry, fine-tuning beats k-means."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import bitsmith
from bitsmith.testing import palettizer_models as helpers
from bitsmith import compressed
from bitsmith.config import (
    ConfigError,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
    dump,
    from_dict,
    load,
)
from bitsmith.errors import CompressionError, PluginError
from bitsmith.palettization import Palettizer
from bitsmith.plugins import Registry
from bitsmith.sizes import model_size
import bitsmith_dkm.plugin as dkm_plugin
from bitsmith_dkm import DKMOptions, DKMPalettizer, DKMPalettizerConfig, DKMParametrization, SoftKMeansClusterer


def config(n_bits: int, **dkm) -> DKMPalettizerConfig:
    spec = ModuleKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=n_bits)})
    return DKMPalettizerConfig(global_config=spec, dkm=DKMOptions(**dkm))


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))


def train_steps(model: nn.Module, steps: int = 5) -> torch.optim.Optimizer:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 2, 6, 6, generator=gen).to(next(model.parameters()).dtype)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_registered_names(registry):
    assert registry.get("palettizer", "dkm") is DKMPalettizer
    assert isinstance(registry.get("cluster", "dkm"), SoftKMeansClusterer)
    from bitsmith.palettization import DKMPalettizer as from_core

    assert from_core is DKMPalettizer
    assert "dkm" in bitsmith.plugins.names("palettizer")


def test_prepare_gives_a_trainable_model_and_leaves_the_original(registry):
    net = small_net()
    before = net[0].weight.detach().clone()
    palettizer = DKMPalettizer(net, config(2), registry=registry)
    model = palettizer.prepare()
    assert parametrize.is_parametrized(model[0], "weight") and parametrize.is_parametrized(model[3], "weight")
    names = {n for n, _ in model.named_parameters()}
    assert {"0.parametrizations.weight.original", "0.parametrizations.weight.0.centroids"} <= names
    opt = train_steps(model)
    assert torch.equal(net[0].weight, before) and not parametrize.is_parametrized(net[0], "weight")
    original = model[0].parametrizations.weight.original
    assert not torch.equal(original.detach(), before)  # the weights trained
    with pytest.raises(RuntimeError, match="finalize"):
        palettizer.report()
    exported = palettizer.finalize(backend="identity")
    assert model[0].weight is original and any(p is original for p in opt.param_groups[0]["params"])
    for layer in (model[0], model[3]):
        assert not parametrize.is_parametrized(layer, "weight")
        record = compressed.records(layer)["weight"]
        assert isinstance(record, compressed.PalettizedTensor) and record.n_bits == 2
        assert torch.equal(record.dequantize(), layer.weight.detach()) and torch.unique(layer.weight).numel() <= 4
    assert torch.equal(exported[0].weight, model[0].weight)
    report = palettizer.report()
    assert [row.name for row in report.layers] == ["0.weight", "3.weight"]
    assert model_size(model).bpw_index == pytest.approx(2.0)
    assert palettizer.snap() is model  # idempotent


def test_eval_mode_computes_with_the_exported_weights(registry):
    palettizer = DKMPalettizer(small_net(), config(2, temperature=0.3), registry=registry)
    model = palettizer.prepare()
    train_steps(model, 3)
    x = torch.randn(3, 2, 6, 6)
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
        model.train()
        soft_out = model(x)
    palettizer.snap()
    with torch.no_grad():
        snapped = model.eval()(x)
    torch.testing.assert_close(eval_out, snapped, rtol=0, atol=1e-6)
    assert (soft_out - snapped).abs().max() > 1e-4  # training mode really is soft at this temperature


def test_memory_saving_trains_identically(registry):
    outs = []
    for memory_saving in (False, True):
        palettizer = DKMPalettizer(small_net().double(), config(3, iterations=2, memory_saving=memory_saving,
                                                                  chunk_size=16), registry=registry)
        model = palettizer.prepare()
        train_steps(model, 3)
        outs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_init_clusterer_missing_and_fallback():
    registry = Registry(autoload=False, plugins=[dkm_plugin])
    with pytest.raises(PluginError, match="install bitsmith-kmeans.*dkm.init_clusterer: dkm"):
        DKMPalettizer(small_net(), config(2), registry=registry).prepare()
    model = DKMPalettizer(small_net(), config(2, init_clusterer="dkm"), registry=registry).prepare()
    assert isinstance(model[0].parametrizations.weight[0], DKMParametrization)


def test_tied_weights_are_refused(registry):
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net[1].weight = net[0].weight
    with pytest.raises(CompressionError, match="shared by 0.weight, 1.weight"):
        DKMPalettizer(net, config(2), registry=registry).prepare()


def test_plain_kmeans_config_is_wrapped(registry):
    kcfg = KMeansPalettizerConfig(global_config=None, module_name_configs={
        "3": ModuleKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=3)})})
    palettizer = DKMPalettizer(small_net(), kcfg, registry=registry)
    assert palettizer.config.dkm == DKMOptions()
    model = palettizer.prepare()
    assert not parametrize.is_parametrized(model[0], "weight") and parametrize.is_parametrized(model[3], "weight")


def test_config_errors_are_path_precise():
    cases = {
        "temperature": (-1, "dkm.temperature: -1.0 must be > 0"),
        "iterations": (99, "dkm.iterations: 99 is not in 0..50"),
        "chunk_size": (0, "dkm.chunk_size: expected a positive integer, got 0"),
        "memory_saving": ("yes", "dkm.memory_saving: expected true or false, got 'yes'"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(ConfigError) as err:
            from_dict({"dkm": {key: value}}, DKMPalettizerConfig)
        assert err.value.lines == [message]
    with pytest.raises(ConfigError) as err:
        from_dict({"dkm": {"temprature": 0.1}}, DKMPalettizerConfig)
    assert err.value.lines[0].startswith("dkm.temprature: unknown key (did you mean 'temperature'?)")
    with pytest.raises(ConfigError) as err:
        load("dkm_palettization_config:\n  dkm: {iterations: two}\n")
    assert err.value.lines == ["dkm_palettization_config.dkm.iterations: expected an integer, got 'two'"]


def test_config_yaml_round_trip():
    cfg = config(2, temperature=0.1, iterations=2, memory_saving=True, straight_through=True)
    text = dump(cfg)
    assert text.startswith("dkm_palettization_config:")
    assert load(text) == cfg and load(text, DKMPalettizerConfig) == cfg


def distill(model: nn.Module, teacher: nn.Module, steps: int, seed: int = 0) -> None:
    """Fine-tune ``model`` on digits: cross-entropy to labels plus KL to the fp32 teacher."""
    x, y, _, _ = helpers.digits()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=gen)
        out = model(x[idx])
        with torch.no_grad():
            ref = teacher(x[idx])
        loss = F.cross_entropy(out, y[idx]) + F.kl_div(F.log_softmax(out, -1), F.log_softmax(ref, -1),
                                                      log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("n_bits", [2, 3])
def test_dkm_fine_tuning_beats_kmeans_on_the_digits_cnn(registry, n_bits):
    reference = helpers.trained_digits_cnn()
    _, _, x_test, y_test = helpers.digits()
    spec = ModuleKMeansPalettizerConfig(op_state_spec={"weight": PalettizationSpec(n_bits=n_bits)})
    kmeans = Palettizer(reference, KMeansPalettizerConfig(global_config=spec), registry=registry).prepare()
    palettizer = DKMPalettizer(reference, KMeansPalettizerConfig(global_config=spec), registry=registry)
    model = palettizer.prepare()
    distill(model, reference, steps=150)
    dkm = palettizer.finalize(backend="identity")
    km, dk = helpers.fidelity(reference, kmeans, x_test, y_test), helpers.fidelity(reference, dkm, x_test, y_test)
    assert dk["kl"] < 0.6 * km["kl"], (km, dk)
    assert dk["accuracy"] >= km["accuracy"], (km, dk)
    assert all(torch.unique(layer.weight).numel() <= 2 ** n_bits
               for layer in (dkm.conv1, dkm.conv2, dkm.fc1, dkm.fc2))


# ---------------------------------------------------------------------------- device=


def _trained_records(registry, **prepare):
    palettizer = DKMPalettizer(small_net(), config(2, temperature=0.3), registry=registry)
    model = palettizer.prepare(**prepare)
    train_steps(model, 3)
    palettizer.snap()
    return model, {name: compressed.records(model.get_submodule(name))["weight"] for name in ("0", "3")}


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cpu:0"])
def test_device_cpu_trains_exactly_like_the_default(registry, device):
    _, default = _trained_records(registry)
    model, placed = _trained_records(registry, device=device)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    for name, record in default.items():
        assert torch.equal(placed[name].lut, record.lut) and torch.equal(placed[name].indices, record.indices)
        assert placed[name].indices.device.type == "cpu" and placed[name].lut.device.type == "cpu"


def _counting_registry(calls: list) -> Registry:
    class Counting:
        def __call__(self, x, k, *, sample_weight=None, seed=None):
            calls.append(x.shape)
            return helpers.exact_kmeans(x, k, sample_weight=sample_weight)

    class CountingPlugin:
        @bitsmith.hookimpl
        def cluster(self, register):
            register("kmeans", Counting())

    return Registry(autoload=False, plugins=[dkm_plugin, CountingPlugin()])


@pytest.mark.parametrize("device, message", [
    ("gpu0", r"device: 'gpu0' is not a torch device"),
    (3, r"device: expected a device name such as 'cpu' or 'cuda', or a torch.device; got 3"),
    ("meta", r"device: 'meta' tensors hold no values"),
    pytest.param("cuda", r"device: 'cuda' asked for, but torch.cuda.is_available\(\) is False",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_a_bad_device_fails_before_any_work(device, message):
    calls: list = []
    net = small_net()
    palettizer = DKMPalettizer(net, config(2), registry=_counting_registry(calls))
    with pytest.raises(ConfigError, match=message):
        palettizer.prepare(inplace=True, device=device)
    assert calls == [] and not parametrize.is_parametrized(net[0], "weight")
    assert palettizer.prepared_model is None
    palettizer.prepare(inplace=True, device="cpu")
    assert len(calls) == 2 and parametrize.is_parametrized(net[0], "weight")
