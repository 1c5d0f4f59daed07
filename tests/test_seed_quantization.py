"""Seed 002 (EDSR: weight palettization + activation quantization), every snippet as a test.

The snippets run as written, with ``coreai_opt`` replaced by ``bitsmith``, on a small
untrained EDSR-style network from the zoo (the trained model and PSNR numbers are in
``examples/edsr_joint_compression.py`` and the int8_quant plugin's slow tests).
Needs the kmeans, int8_quant and export_coreai plugins installed (the default
registry finds them through their entry points).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bitsmith_int8_quant")
pytest.importorskip("bitsmith_kmeans")
pytest.importorskip("bitsmith_export_coreai")

from bitsmith_zoo.edsr import EDSR, EDSRConfig  # noqa: E402


@pytest.fixture
def fp32_model():
    torch.manual_seed(0)
    model = EDSR(EDSRConfig(n_blocks=2, n_feats=16, global_residual=False)).eval()
    return model


@pytest.fixture
def calibration_images():
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, 24, 24, generator=gen) for _ in range(5)]


@pytest.fixture
def example_inputs(calibration_images):
    # "Use a representative low-resolution (LR) image from the calibration set as example inputs"
    return calibration_images[0]


def test_default_quantizer_config_matches_the_seed_table():
    from bitsmith.quantization import QuantizerConfig
    from bitsmith.quantization.spec import PerChannelGranularity, PerTensorGranularity

    config = QuantizerConfig()
    weight = config.global_config.op_state_spec["weight"]
    activation = config.global_config.op_input_spec["*"]
    assert (weight.dtype, weight.granularity) == (torch.int8, PerChannelGranularity(axis=0))
    assert (activation.dtype, activation.granularity, activation.observer) == (
        torch.int8, PerTensorGranularity(), "moving_average")
    assert config.global_config.op_output_spec["*"] == activation


def test_w_int8_a_int8(fp32_model, example_inputs, calibration_images):
    from bitsmith.quantization import Quantizer, QuantizerConfig

    config = QuantizerConfig()
    quantizer = Quantizer(fp32_model, config)
    # Use a representative low-resolution (LR) image from the calibration set as example inputs
    prepared_model = quantizer.prepare(example_inputs)

    with quantizer.calibration_mode():
        with torch.no_grad():
            for lr_image in calibration_images:
                prepared_model(lr_image)

    with torch.no_grad():
        reference, output = fp32_model(calibration_images[1]), prepared_model(calibration_images[1])
    assert output.shape == (1, 3, 48, 48)
    noise = (output - reference).pow(2).mean() / reference.pow(2).mean()
    assert 0 < noise < 1e-2  # int8 noise, and clearly not the float model

    from bitsmith.sizes import model_size

    size = model_size(prepared_model)
    weights = sum(m.weight.numel() for m in fp32_model.modules() if isinstance(m, torch.nn.Conv2d))
    assert size.compressed.numel == weights
    assert size.compressed.payload_bits == 8 * weights  # INT8 weights: one byte each, plus scales


def test_joint_w_p4_int8_a_int8(fp32_model, example_inputs, calibration_images):
    from bitsmith.palettization import (
        KMeansPalettizer,
        KMeansPalettizerConfig,
        ModuleKMeansPalettizerConfig,
    )
    from bitsmith.palettization.spec import PalettizationSpec
    from bitsmith.quantization.spec import QuantizationSpec, QuantizationScheme

    palett_spec = PalettizationSpec(
        n_bits=4,
        lut_qspec=QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC),
    )
    palett_config = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={"weight": palett_spec},
        )
    )

    from bitsmith.quantization import ModuleQuantizerConfig, QuantizerConfig

    act_spec = QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC)
    quant_config = QuantizerConfig(
        global_config=ModuleQuantizerConfig(
            op_state_spec=None,
            op_input_spec={"*": act_spec},
            op_output_spec={"*": act_spec},
        )
    )

    import bitsmith as opt

    # Step 1: palettize weights
    palettizer = KMeansPalettizer(fp32_model, palett_config)
    prepared_pal = palettizer.prepare(example_inputs)
    palettized = palettizer.finalize(backend=opt.ExportBackend.CoreAI)

    # Step 2: quantize activations on the palettized model
    from bitsmith.quantization import Quantizer

    quantizer = Quantizer(palettized, quant_config)
    prepared_model = quantizer.prepare(example_inputs)

    with quantizer.calibration_mode():
        with torch.no_grad():
            for lr_image in calibration_images:
                prepared_model(lr_image)

    # Finalize
    finalized_model = quantizer.finalize(backend=opt.ExportBackend.CoreAI)

    from bitsmith import compressed
    from bitsmith.compressed import ActivationQuant, PalettizedTensor
    from bitsmith.sizes import model_size

    kinds = {type(r) for *_, r in compressed.iter_records(finalized_model)}
    assert kinds == {PalettizedTensor, ActivationQuant}
    assert quantizer.weights == {}  # palettized weights are not requantized
    x = calibration_images[2]
    with torch.no_grad():
        palettized_out, joint, exported = prepared_pal(x), prepared_model(x), finalized_model(x)
    assert (joint - palettized_out).abs().max() < 0.1 * palettized_out.abs().max()
    assert (exported - joint).abs().max() <= 1e-3 * joint.abs().max()
    # 4-bit indices plus INT8 LUTs: about 8x smaller than fp32 weights
    assert model_size(finalized_model).compressed.bpw < 4.5


@pytest.mark.slow
def test_example_reproduces_the_seed_summary_shape():
    """examples/edsr_joint_compression.py on the trained zoo EDSR: small PSNR drops, ~4x and ~8x smaller."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "edsr_joint_compression.py"
    spec = importlib.util.spec_from_file_location("edsr_joint_compression", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.run()
    print(example.summary(results))
    base, w8a8, joint = (results[k] for k in ("FP32 baseline", "W_INT8_A_INT8", "W_P4(INT8)_A_INT8 (joint)"))
    # measured: 35.82 / 35.55 / 35.49 dB, 0.748 / 0.192 / 0.096 MiB
    assert 0 < base["psnr"] - w8a8["psnr"] < 0.6
    assert 0 < base["psnr"] - joint["psnr"] < 0.8
    for r in (w8a8, joint):
        assert abs(r["psnr_exported"] - r["psnr"]) < 0.01  # the Core AI export computes the same thing
    assert 3.7 < base["mib"] / w8a8["mib"] < 4.0
    assert 7.0 < base["mib"] / joint["mib"] < 8.0
