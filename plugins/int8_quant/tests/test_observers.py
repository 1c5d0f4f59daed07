"""Observer math and the observer registry."""

from __future__ import annotations

import pytest
import torch

import bitsmith
from bitsmith.plugins import Registry
from bitsmith_int8_quant import plugin as int8_plugin
from bitsmith_int8_quant.observers import MinMaxObserver, MovingAverageObserver


def test_min_max_tracks_running_extremes():
    obs = MinMaxObserver()
    obs.observe(torch.tensor([1.0, -2.0, 3.0]), (0,))
    obs.observe(torch.tensor([0.5, 4.0]), (0,))
    obs.observe(torch.tensor([-3.5, 0.0]), (0,))
    lo, hi = obs.bounds()
    assert (lo.item(), hi.item()) == (-3.5, 4.0)
    assert obs.count == 3


def test_moving_average_formula():
    obs = MovingAverageObserver()  # c = 0.01
    obs.observe(torch.tensor([-1.0, 2.0]), (0,))
    lo, hi = obs.bounds()
    assert (lo.item(), hi.item()) == (-1.0, 2.0)  # the first batch sets the range
    obs.observe(torch.tensor([-11.0, 102.0]), (0,))
    lo, hi = obs.bounds()
    assert lo.item() == pytest.approx(-1.0 + 0.01 * (-11.0 + 1.0))  # -1.1
    assert hi.item() == pytest.approx(2.0 + 0.01 * (102.0 - 2.0))  # 3.0


def test_moving_average_sequence_with_custom_constant():
    obs = MovingAverageObserver(averaging_constant=0.5)
    expected_hi = None
    for value in (4.0, 0.0, 2.0, 8.0):
        obs.observe(torch.tensor([0.0, value]), (0,))
        expected_hi = value if expected_hi is None else expected_hi + 0.5 * (value - expected_hi)
    assert obs.bounds()[1].item() == pytest.approx(expected_hi)  # 4 -> 2 -> 2 -> 5
    assert expected_hi == 5.0


def test_per_channel_reduction():
    x = torch.tensor([[1.0, -2.0, 0.5], [4.0, 3.0, -1.0]])  # two channels on dim 0
    obs = MinMaxObserver()
    obs.observe(x, (1,))
    lo, hi = obs.bounds()
    assert lo.tolist() == [-2.0, -1.0] and hi.tolist() == [1.0, 4.0]
    with pytest.raises(ValueError, match="fixed channel count"):
        obs.observe(torch.ones(3, 3), (1,))


def test_bounds_before_any_observation_is_an_error():
    for cls in (MinMaxObserver, MovingAverageObserver):
        with pytest.raises(RuntimeError, match="no tensor observed yet"):
            cls().bounds()


def test_bad_averaging_constant():
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageObserver(averaging_constant=0.0)


def test_registered_through_the_observer_hook():
    registry = Registry(autoload=False, plugins=[int8_plugin])
    assert registry.names("observer") == ["min_max", "moving_average"]
    assert registry.names("quantizer") == ["int8"]
    assert isinstance(registry.get("observer", "moving_average")(), MovingAverageObserver)


def test_default_registry_finds_the_plugin_through_its_entry_point():
    registry = Registry(autoload=True)
    assert "int8" in registry.names("quantizer")
    assert registry.provider("quantizer", "int8").dist == "bitsmith-int8-quant"
    from bitsmith.quantization import Quantizer

    assert Quantizer.__module__ == "bitsmith_int8_quant.quantizer"


class FixedRange:
    """A third-party observer: always reports [-8, 8]."""

    def observe(self, x, reduce_dims):
        self.shape = tuple(s for d, s in enumerate(x.shape) if d not in tuple(reduce_dims))

    def bounds(self):
        return torch.full(self.shape, -8.0), torch.full(self.shape, 8.0)


class FixedRangePlugin:
    @bitsmith.hookimpl
    def observer(self, register):
        register("fixed", FixedRange)


def test_third_party_observer_drives_activation_and_weight_scales(small_net, batches):
    from bitsmith.config import ModuleQuantizerConfig, QuantizationSpec, QuantizerConfig
    from bitsmith.quantization import PerChannelGranularity
    from bitsmith_int8_quant import Quantizer

    registry = Registry(autoload=False, plugins=[int8_plugin, FixedRangePlugin()])
    act = QuantizationSpec(dtype="int8", qscheme="symmetric", observer="fixed")
    weight = QuantizationSpec(dtype="int8", qscheme="symmetric", granularity=PerChannelGranularity(), observer="fixed")
    config = QuantizerConfig(global_config=ModuleQuantizerConfig(op_state_spec={"weight": weight},
                                                                 op_input_spec={"*": act}, op_output_spec=None))
    quantizer = Quantizer(small_net, config, registry=registry)
    prepared = quantizer.prepare(batches[0])
    with quantizer.calibration_mode():
        prepared(batches[0])
    for site in quantizer.activation_sites:
        assert site.record.scale.item() == pytest.approx(8 / 127)
    assert torch.allclose(quantizer.weights["c1.weight"].scale, torch.full((8, 1, 1, 1), 8 / 127))
