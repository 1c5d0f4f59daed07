"""Joint compression (seed 002 W_P4(INT8)_A_INT8): palettize + finalize, then quantize activations.

Isolated: the core ``Palettizer`` with a quantile stand-in clusterer registered as
"kmeans" and a recording "coreai" backend, so this runs with the core and this
plugin only.
"""

from __future__ import annotations

import pytest
import torch

import bitsmith as opt
from bitsmith import compressed
from bitsmith.compressed import ActivationQuant, PalettizedTensor
from bitsmith.config import KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, PalettizationSpec
from bitsmith.palettization import Palettizer
from bitsmith.quantization import ModuleQuantizerConfig, QuantizationScheme, QuantizationSpec, QuantizerConfig
from bitsmith.sizes import model_size
from bitsmith_int8_quant import AlreadyCompressedWarning, Quantizer

ACT = QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC)


def palettize(model, registry):
    spec = PalettizationSpec(n_bits=4, lut_qspec=QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC))
    config = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec}))
    palettizer = Palettizer(model, config, registry=registry)
    prepared = palettizer.prepare()
    return prepared, palettizer.finalize(backend=opt.ExportBackend.CoreAI)


def test_activation_quantization_leaves_palettized_weights_alone(small_net, batches, registry, helpers):
    prepared_pal, palettized = palettize(small_net, registry)
    pal_weights = {n: m.weight.detach().clone() for n, m in palettized.named_modules() if hasattr(m, "weight")}
    config = QuantizerConfig(global_config=ModuleQuantizerConfig(
        op_state_spec=None, op_input_spec={"*": ACT}, op_output_spec={"*": ACT}))
    quantizer = Quantizer(palettized, config, registry=registry)
    prepared = quantizer.prepare(batches[0])
    assert quantizer.weights == {}
    for name, module in prepared.named_modules():
        if name in pal_weights:
            assert torch.equal(module.weight, pal_weights[name]), name
            assert isinstance(compressed.records(module)["weight"], PalettizedTensor)
    with quantizer.calibration_mode(), torch.no_grad():
        for x in batches:
            prepared(x)
    with torch.no_grad():
        float_pal = palettized(batches[1])
        joint = prepared(batches[1])
    assert 0 < (joint - float_pal).abs().max() < 0.05 * float_pal.abs().max()
    exported = quantizer.finalize(backend=opt.ExportBackend.CoreAI)
    kinds = {}
    for _, _, tensor, record in compressed.iter_records(exported):
        kinds.setdefault(type(record).__name__, set()).add(tensor)
    assert kinds == {"PalettizedTensor": {"weight"}, "ActivationQuant": {"input.0", "output.0"}}
    for _, _, _, record in compressed.iter_records(exported):
        if isinstance(record, ActivationQuant):
            assert record.zero_point is None and record.spec.qscheme is QuantizationScheme.SYMMETRIC
    # sizes: 4-bit indices + int8 LUTs with one fp32 scale each; activations cost nothing
    size = model_size(exported)
    assert size.compressed == model_size(prepared_pal).compressed
    n = size.compressed.numel
    assert size.compressed.payload_bits == n * 4
    assert size.compressed.overhead_bits == 4 * (16 * 8 + 32)


def test_default_config_on_a_palettized_model_warns_and_skips_the_weights(small_net, batches, registry):
    _, palettized = palettize(small_net, registry)
    quantizer = Quantizer(palettized, registry=registry)
    expected = r"4 weights already carry compressed records and were left as is: c1\.weight \(PalettizedTensor\), "
    with pytest.warns(AlreadyCompressedWarning, match=expected):
        prepared = quantizer.prepare(batches[0])
    assert quantizer.weights == {}
    assert all(isinstance(r, PalettizedTensor) for *_, t, r in compressed.iter_records(prepared) if t == "weight")
