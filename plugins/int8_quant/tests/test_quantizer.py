"""Quantizer: activation sites, calibration semantics, finalize records, bad specs, resolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitsmith import compressed
from bitsmith.compressed import ActivationQuant, QuantizedTensor
from bitsmith.config import ModuleQuantizerConfig, OpQuantizerConfig, QuantizationSpec, QuantizerConfig
from bitsmith.errors import ConfigError, PluginError
from bitsmith.quantization import PerBlockGranularity, PerChannelGranularity
from bitsmith_int8_quant import NotCalibratedError, Quantizer

SYM = QuantizationSpec(dtype="int8", qscheme="symmetric", observer="min_max")


def act_only(inputs=None, outputs=None, **extra) -> QuantizerConfig:
    """Activations only; a bare spec means ``{"*": spec}``."""
    inputs = {"*": inputs} if isinstance(inputs, QuantizationSpec) else inputs
    outputs = {"*": outputs} if isinstance(outputs, QuantizationSpec) else outputs
    return QuantizerConfig(global_config=ModuleQuantizerConfig(op_state_spec=None, op_input_spec=inputs,
                                                               op_output_spec=outputs, **extra))


def labels(quantizer):
    return [site.label for site in quantizer.activation_sites]


def calibrate(quantizer, prepared, batches):
    with quantizer.calibration_mode(), torch.no_grad():
        for x in batches:
            prepared(x)


# ---------------------------------------------------------------------- sites


def test_default_config_quantizes_inputs_and_outputs_of_every_layer(small_net, batches, registry):
    quantizer = Quantizer(small_net, registry=registry)
    quantizer.prepare(batches[0])
    # c1 -> ReLU is fused: the ReLU's output carries c1's output quantization
    assert labels(quantizer) == ["c1 input.0", "act output.0", "c2 input.0", "c2 output.0",
                                 "up input.0", "up output.0", "fc input.0", "fc output.0"]
    assert quantizer.activation_sites[1].rule == "global_config.op_output_spec['*'] (fused: c1 -> act)"
    quantizer.prepare(batches[0], fuse_activations=False)
    assert labels(quantizer)[:3] == ["c1 input.0", "c1 output.0", "c2 input.0"]
    site = quantizer.activation_sites[0]
    assert site.spec.dtype_name == "int8" and site.spec.qscheme.value == "asymmetric"
    assert site.spec.observer == "moving_average" and site.rule == "global_config.op_input_spec['*']"
    assert sorted(quantizer.weights) == ["c1.weight", "c2.weight", "fc.weight", "up.weight"]


def test_index_keys_beat_the_wildcard_and_none_disables(registry):
    class Mix(nn.Module):
        def forward(self, a, b, scale):
            return a * scale + b, a - b

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = Mix()

        def forward(self, a, b):
            return self.mix(a, b, torch.tensor(2))

    asym = QuantizationSpec(dtype="uint8", qscheme="asymmetric", observer="min_max")
    config = act_only(SYM, SYM, op_type_config={Mix: OpQuantizerConfig(
        op_state_spec=None, op_input_spec={"*": SYM, "1": asym}, op_output_spec={"0": None, "1": SYM})})
    quantizer = Quantizer(Net(), config, registry=registry)
    x = (torch.randn(3, 4), torch.randn(3, 4))
    quantizer.prepare(x)
    # input 2 is an integer tensor: never quantized; output 0 explicitly None
    assert labels(quantizer) == ["mix input.0", "mix input.1", "mix output.1"]
    assert [s.spec.dtype_name for s in quantizer.activation_sites] == ["int8", "uint8", "int8"]
    assert quantizer.activation_sites[1].rule.endswith("op_input_spec['1']")


def test_module_io_specs_apply_to_the_scope_module_only(small_net, batches, registry):
    config = QuantizerConfig(global_config=None)
    config.set_module_name("c2", ModuleQuantizerConfig(op_state_spec=None, op_input_spec=None, op_output_spec=None,
                                                       module_output_spec={"0": SYM}))
    quantizer = Quantizer(small_net, config, registry=registry)
    quantizer.prepare(batches[0])
    assert labels(quantizer) == ["c2 output.0"]
    global_io = act_only(None, None, module_input_spec={"*": SYM}, module_output_spec={"0": SYM})
    quantizer = Quantizer(small_net, global_io, registry=registry)
    quantizer.prepare(batches[0])
    assert labels(quantizer) == ["<model> input.0", "<model> output.0"]


def test_non_layer_ops_only_when_named(small_net, batches, registry):
    config = act_only(SYM, None, op_type_config={"ReLU": OpQuantizerConfig(op_output_spec={"*": SYM},
                                                                              op_input_spec=None)},
                      op_name_config={"c2": None})
    quantizer = Quantizer(small_net, config, registry=registry)
    quantizer.prepare(batches[0])
    assert labels(quantizer) == ["c1 input.0", "act output.0", "up input.0", "fc input.0"]


def test_activations_need_example_inputs(small_net, registry):
    with pytest.raises(ValueError, match="example_inputs: prepare\\(\\) needs representative inputs"):
        Quantizer(small_net, registry=registry).prepare()


def test_weight_only_needs_no_inputs_and_no_calibration(small_net, batches, registry):
    quantizer = Quantizer(small_net, QuantizerConfig.presets.w8(), registry=registry)
    prepared = quantizer.prepare()
    assert quantizer.activation_sites == [] and quantizer.is_calibrated
    out = prepared(batches[0])
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------- calibration


def test_uncalibrated_model_raises_instead_of_returning_nans(small_net, batches, registry):
    quantizer = Quantizer(small_net, registry=registry)
    prepared = quantizer.prepare(batches[0])
    with pytest.raises(NotCalibratedError, match=r"activation c1 input\.0 is not calibrated \(8 of 8 .*"
                                                 r"calibration_mode"):
        prepared(batches[0])


def test_calibration_mode_semantics(small_net, batches, registry):
    quantizer = Quantizer(small_net, registry=registry)
    prepared = quantizer.prepare(batches[0])
    weights_only = Quantizer(small_net, QuantizerConfig.presets.w8(), registry=registry).prepare()
    with quantizer.calibration_mode() as model:
        assert model is prepared
        with torch.no_grad():
            out = prepared(batches[0])
        # activations pass through unquantized while calibrating; weights are quantized
        assert torch.equal(out, weights_only(batches[0]))
        assert all(s.observations == 1 and s.record is None for s in quantizer.activation_sites)
    assert quantizer.is_calibrated
    frozen = {s.label: (s.record.scale.clone(), s.observations) for s in quantizer.activation_sites}
    with torch.no_grad():
        quantized = prepared(batches[1] * 10)  # outside: observers frozen, out-of-range values clamp
        again = prepared(batches[0])
    for site in quantizer.activation_sites:
        assert torch.equal(site.record.scale, frozen[site.label][0]) and site.observations == 1
    assert torch.isfinite(quantized).all()
    assert not torch.equal(again, out)  # fake-quantized now
    assert (again - small_net(batches[0])).abs().max() < 0.05 * small_net(batches[0]).abs().max()


def test_recalibrating_continues_the_moving_average(small_net, batches, registry):
    quantizer = Quantizer(small_net, registry=registry)
    prepared = quantizer.prepare(batches[0])
    calibrate(quantizer, prepared, batches[:1])
    first = quantizer.activation_sites[0].observer.bounds()[1].item()
    calibrate(quantizer, prepared, [batches[1] * 3])
    site = quantizer.activation_sites[0]
    assert site.observations == 2
    expected = first + 0.01 * (batches[1] * 3).max().item() - 0.01 * first
    assert site.observer.bounds()[1].item() == pytest.approx(expected)


def test_activation_scales_follow_the_observed_range(registry):
    model = nn.Sequential(nn.Linear(3, 2))
    quantizer = Quantizer(model, act_only({"0": SYM}, None), registry=registry)
    prepared = quantizer.prepare(torch.zeros(1, 3))
    calibrate(quantizer, prepared, [torch.tensor([[-1.0, 0.5, 2.0]]), torch.tensor([[3.0, -0.5, 0.0]])])
    record = quantizer.activation_sites[0].record
    assert record.scale.item() == pytest.approx(3.0 / 127) and record.zero_point is None


def test_calibration_mode_misuse(small_net, batches, registry):
    quantizer = Quantizer(small_net, registry=registry)
    with pytest.raises(RuntimeError, match="call prepare"):
        with quantizer.calibration_mode():
            pass
    quantizer.prepare(batches[0])
    with quantizer.calibration_mode():
        with pytest.raises(RuntimeError, match="already active"):
            with quantizer.calibration_mode():
                pass


def test_site_never_reached_during_calibration_is_named(registry):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            y = self.a(x)
            return self.b(y) if x.sum() > 0 else y

    on, off = torch.ones(1, 2), -torch.ones(1, 2)
    quantizer = Quantizer(Branchy(), act_only(SYM, None), registry=registry)
    prepared = quantizer.prepare(on)
    assert labels(quantizer) == ["a input.0", "b input.0"]
    calibrate(quantizer, prepared, [off])  # never reaches b
    assert torch.isfinite(prepared(off)).all()
    with pytest.raises(NotCalibratedError, match=r"activation b input\.0 is not calibrated \(1 of 2"):
        prepared(on)
    with pytest.raises(RuntimeError, match=r"1 activations were never seen during calibration \(b input\.0\)"):
        quantizer.finalize()
    # modules that the example inputs do not reach are not quantized at all
    quantizer = Quantizer(Branchy(), act_only(SYM, None), registry=registry)
    quantizer.prepare(off)
    assert labels(quantizer) == ["a input.0"]


def test_non_finite_calibration_is_reported(registry):
    model = nn.Sequential(nn.Linear(2, 2))
    quantizer = Quantizer(model, act_only(SYM, None), registry=registry)
    prepared = quantizer.prepare(torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"0 input\.0: calibration saw non-finite values"):
        calibrate(quantizer, prepared, [torch.tensor([[float("inf"), 1.0]])])


# ---------------------------------------------------------------------- finalize


def test_finalize_hands_records_to_the_backend(small_net, batches, registry, helpers):
    quantizer = Quantizer(small_net, registry=registry)
    prepared = quantizer.prepare(batches[0])
    calibrate(quantizer, prepared, batches)
    with torch.no_grad():
        expected = prepared(batches[2])
    exported = quantizer.finalize(backend="coreai")
    assert helpers.backend.received == [exported] and exported is not prepared
    found = {(name, tensor): type(rec) for name, _, tensor, rec in compressed.iter_records(exported)}
    assert found == {
        ("c1", "weight"): QuantizedTensor, ("c1", "input.0"): ActivationQuant, ("act", "output.0"): ActivationQuant,
        ("c2", "weight"): QuantizedTensor, ("c2", "input.0"): ActivationQuant, ("c2", "output.0"): ActivationQuant,
        ("up", "weight"): QuantizedTensor, ("up", "input.0"): ActivationQuant, ("up", "output.0"): ActivationQuant,
        ("fc", "weight"): QuantizedTensor, ("fc", "input.0"): ActivationQuant, ("fc", "output.0"): ActivationQuant,
    }
    # the exported copy has no hooks: replaying its records by hand reproduces the prepared model
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in exported.modules())
    replay = []
    for _, module, tensor, record in compressed.iter_records(exported):
        if isinstance(record, ActivationQuant):
            direction, index = tensor.split(".")
            if direction == "input":
                replay.append(module.register_forward_pre_hook(
                    lambda m, args, r=record: (r.fake_quantize(args[0]),)))
            else:
                replay.append(module.register_forward_hook(lambda m, args, out, r=record: r.fake_quantize(out)))
    with torch.no_grad():
        assert torch.equal(exported(batches[2]), expected)
    # the prepared model is unchanged: hooks still active, no activation records
    assert not any(isinstance(r, ActivationQuant) for *_, r in compressed.iter_records(prepared))
    with torch.no_grad():
        assert torch.equal(prepared(batches[2]), expected)


def test_finalize_inplace_removes_the_hooks(small_net, batches, registry, helpers):
    quantizer = Quantizer(small_net, registry=registry)
    prepared = quantizer.prepare(batches[0])
    calibrate(quantizer, prepared, batches)
    exported = quantizer.finalize(backend="torch", inplace=True)
    assert exported is prepared
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in exported.modules())
    assert isinstance(compressed.records(exported.act)["output.0"], ActivationQuant)


def test_finalize_needs_calibration_and_a_known_backend(small_net, batches, registry):
    quantizer = Quantizer(small_net, registry=registry)
    with pytest.raises(RuntimeError, match="call prepare"):
        quantizer.finalize()
    prepared = quantizer.prepare(batches[0])
    with pytest.raises(RuntimeError, match=r"8 activations were never seen during calibration \(c1 input\.0"):
        quantizer.finalize()
    calibrate(quantizer, prepared, batches[:1])
    with pytest.raises(PluginError, match="no export backend named 'onnx'; available: coreai, torch"):
        quantizer.finalize(backend="onnx")
    with torch.no_grad():  # a failed export leaves the prepared model working
        assert torch.isfinite(prepared(batches[0])).all()
        assert not torch.equal(prepared(batches[0]), small_net(batches[0]))


# ---------------------------------------------------------------------- bad specs


@pytest.mark.parametrize("spec, message", [
    (QuantizationSpec(dtype="int4"), "global_config.op_input_spec.*.dtype: int4 is not one of int8, uint8"),
    (QuantizationSpec(dtype="float8_e4m3fn"),
     "global_config.op_input_spec.*.dtype: float8_e4m3fn is not one of int8, uint8 (float8 needs a float8 quantizer)"),
    (QuantizationSpec(dtype="int8", granularity=PerChannelGranularity()),
     "global_config.op_input_spec.*.granularity: per_channel is not supported for activations"),
    (QuantizationSpec(dtype="int8", observer="percentile"),
     "global_config.op_input_spec.*.observer: 'percentile' is not one of min_max, moving_average"),
])
def test_unsupported_activation_specs_are_rejected_up_front(spec, message, small_net, registry):
    with pytest.raises(ConfigError) as info:
        Quantizer(small_net, act_only({"*": spec}, None), registry=registry)
    assert message in str(info.value)


def test_every_problem_is_listed_with_its_path(small_net, registry):
    weight = QuantizationSpec(dtype="float8_e5m2", granularity=PerBlockGranularity())
    config = QuantizerConfig(global_config=ModuleQuantizerConfig(
        op_state_spec={"weight": weight}, op_input_spec={"x": SYM}, op_output_spec=None,
        op_name_config={"fc": OpQuantizerConfig(op_output_spec={"0": QuantizationSpec(dtype="uint4")})}))
    with pytest.raises(ConfigError) as info:
        Quantizer(small_net, config, registry=registry)
    assert info.value.lines == [
        "global_config.op_state_spec.weight.dtype: float8_e5m2 is not one of int8, uint8, int4, uint4 "
        "(float8 needs a float8 quantizer)",
        "global_config.op_input_spec.x: key 'x' is not an input/output index ('0', '1', ...) or '*'",
        "global_config.op_name_config.fc.op_output_spec.0.dtype: uint4 is not one of int8, uint8 "
        "(not a supported activation dtype)",
    ]


def test_core_rejects_float8_with_a_zero_point():
    with pytest.raises(ValueError, match="qscheme: 'asymmetric' is not allowed with dtype float8_e4m3fn"):
        QuantizationSpec(dtype="float8_e4m3fn", qscheme="asymmetric")


def test_bad_values_in_yaml_configs_fail_with_paths(small_net, registry):
    data = {"global_config": {"op_input_spec": {"*": {"dtype": "int3"}}}}
    with pytest.raises(ConfigError, match=r"global_config\.op_input_spec\.\*\.dtype: 'int3' is not one of"):
        Quantizer(small_net, data, registry=registry)


def test_config_from_dict_round_trip(small_net, batches, registry):
    data = {"global_config": {"op_state_spec": None,
                              "op_input_spec": {"*": {"dtype": "int8", "qscheme": "symmetric"}},
                              "op_output_spec": {"*": {"dtype": "int8", "qscheme": "symmetric"}}}}
    quantizer = Quantizer(small_net, data, registry=registry)
    quantizer.prepare(batches[0])
    assert quantizer.weights == {} and len(quantizer.activation_sites) == 8


def test_model_must_be_a_module(registry):
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got str"):
        Quantizer("model", registry=registry)


def test_half_precision_model_keeps_its_dtype(registry):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).to(torch.bfloat16).eval()
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    quantizer = Quantizer(model, registry=registry)
    prepared = quantizer.prepare(x)
    calibrate(quantizer, prepared, [x])
    out = prepared(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert quantizer.weights["0.weight"].dtype == torch.bfloat16
    assert prepared[0].weight.dtype == torch.bfloat16
