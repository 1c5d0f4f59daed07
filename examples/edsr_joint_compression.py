"""Seed 002 on a real super-resolution network: FP32 vs W_INT8_A_INT8 vs W_P4(INT8)_A_INT8.

The network is the zoo's EDSR-style x2 model (``bitsmith_zoo.edsr.load_edsr``: 8
residual blocks x 32 features, trained briefly on the calibration photos and cached).
Data mirrors the seed's B100 protocol (100 HR/LR pairs, 20 for calibration, 80 for
evaluation): the four held-out photos (never used for training) are cut into
non-overlapping 96x96 HR tiles, each with its bicubic-downscaled 48x48 LR input; the
tiles are shuffled with a fixed seed and 20% of them calibrate the activation
ranges, the other 80% are scored. PSNR is against the ground-truth HR tile, with a
border of ``scale`` pixels shaved (the SR convention), averaged over tiles.

Weight storage comes from :func:`bitsmith.sizes.model_size` of the exported (Core AI)
model: every weight and bias, with INT8 weights at one byte plus one fp32 scale per
output channel, and 4-bit palettized weights at half a byte plus their INT8 LUTs.

Run: ``.venv/bin/python examples/edsr_joint_compression.py`` (about a minute once the
zoo has trained and cached the model; the first run trains it).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import bitsmith as opt
from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig, ModuleKMeansPalettizerConfig
from bitsmith.palettization.spec import PalettizationSpec
from bitsmith.quantization import ModuleQuantizerConfig, Quantizer, QuantizerConfig
from bitsmith.quantization.spec import QuantizationScheme, QuantizationSpec
from bitsmith.sizes import model_size
from bitsmith.table import format_table
from bitsmith_zoo.data import HELDOUT_IMAGES, load_image
from bitsmith_zoo.edsr import downscale, load_edsr, psnr


def tile_pairs(tile: int = 96, scale: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping ``tile`` x ``tile`` HR tiles of the held-out photos with their LR inputs, shuffled."""
    pairs = []
    for name in HELDOUT_IMAGES:
        image = load_image(name)
        h, w = image.shape[-2:]
        for top in range(0, h - tile + 1, tile):
            for left in range(0, w - tile + 1, tile):
                hr = image[:, top:top + tile, left:left + tile].unsqueeze(0).contiguous()
                pairs.append((downscale(hr, scale), hr))
    random.Random(seed).shuffle(pairs)
    return pairs


@torch.no_grad()
def mean_psnr(model: torch.nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean PSNR (dB) of ``model`` over ``(lr, hr)`` pairs, border of ``scale`` pixels shaved."""
    scores = [psnr(model(lr), hr, shave=hr.shape[-1] // lr.shape[-1]) for lr, hr in pairs]
    return sum(scores) / len(scores)


def calibrate(quantizer: Quantizer, prepared: torch.nn.Module, images: list[torch.Tensor]) -> None:
    """Seed 002's calibration loop."""
    with quantizer.calibration_mode():
        with torch.no_grad():
            for lr_image in images:
                prepared(lr_image)


def w8a8(fp32_model: torch.nn.Module, example_inputs: torch.Tensor, calibration_images: list[torch.Tensor]):
    """W_INT8_A_INT8 with the default ``QuantizerConfig()``: (prepared model, finalized model)."""
    config = QuantizerConfig()
    quantizer = Quantizer(fp32_model, config)
    prepared_model = quantizer.prepare(example_inputs)
    calibrate(quantizer, prepared_model, calibration_images)
    return prepared_model, quantizer.finalize(backend=opt.ExportBackend.CoreAI)


def joint(fp32_model: torch.nn.Module, example_inputs: torch.Tensor, calibration_images: list[torch.Tensor]):
    """W_P4(INT8)_A_INT8: 4-bit k-means palettization with INT8 LUTs, then INT8 activations."""
    palett_spec = PalettizationSpec(
        n_bits=4,
        lut_qspec=QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC),
    )
    palett_config = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": palett_spec}))
    act_spec = QuantizationSpec(dtype=torch.int8, qscheme=QuantizationScheme.SYMMETRIC)
    quant_config = QuantizerConfig(global_config=ModuleQuantizerConfig(
        op_state_spec=None, op_input_spec={"*": act_spec}, op_output_spec={"*": act_spec}))

    palettizer = KMeansPalettizer(fp32_model, palett_config)
    palettizer.prepare(example_inputs)
    palettized = palettizer.finalize(backend=opt.ExportBackend.CoreAI)
    quantizer = Quantizer(palettized, quant_config)
    prepared_model = quantizer.prepare(example_inputs)
    calibrate(quantizer, prepared_model, calibration_images)
    return prepared_model, quantizer.finalize(backend=opt.ExportBackend.CoreAI)


def run(calibration_fraction: float = 0.2, seed: int = 0) -> dict[str, dict[str, float]]:
    """Compress, evaluate and return ``{configuration: {"psnr", "psnr_exported", "mib"}}``."""
    torch.manual_seed(seed)
    fp32_model = load_edsr().eval()
    pairs = tile_pairs(seed=seed)
    n_cal = max(1, round(calibration_fraction * len(pairs)))
    calibration_images = [lr for lr, _ in pairs[:n_cal]]
    eval_pairs = pairs[n_cal:]
    example_inputs = calibration_images[0]
    print(f"EDSR x2 ({sum(p.numel() for p in fp32_model.parameters()):,} parameters); "
          f"{len(pairs)} held-out tiles: {n_cal} for calibration, {len(eval_pairs)} for evaluation")

    results = {"FP32 baseline": {"psnr": mean_psnr(fp32_model, eval_pairs), "psnr_exported": float("nan"),
                                 "mib": model_size(fp32_model).mib}}
    for label, make in (("W_INT8_A_INT8", w8a8), ("W_P4(INT8)_A_INT8 (joint)", joint)):
        start = time.perf_counter()
        prepared, exported = make(fp32_model, example_inputs, calibration_images)
        results[label] = {"psnr": mean_psnr(prepared, eval_pairs), "psnr_exported": mean_psnr(exported, eval_pairs),
                          "mib": model_size(exported).mib}
        print(f"  {label}: compressed and calibrated in {time.perf_counter() - start:.1f} s")
    return results


def summary(results: dict[str, dict[str, float]]) -> str:
    """Seed 002's summary table: PSNR, drop vs FP32, weight storage and reduction."""
    base = results["FP32 baseline"]
    rows = []
    for label, r in results.items():
        ratio = base["mib"] / r["mib"]
        storage = f"~{r['mib']:.3f} MiB" + ("" if label == "FP32 baseline" else f" ({ratio:.1f}x smaller)")
        rows.append([label, f"{r['psnr']:.2f} dB", f"{r['psnr'] - base['psnr']:+.2f} dB",
                     "-" if r["psnr_exported"] != r["psnr_exported"] else f"{r['psnr_exported']:.2f} dB", storage])
    return format_table(["Configuration", "PSNR", "vs FP32", "PSNR (Core AI export)", "Weight storage"], rows,
                        align="lrrrl")


def main(argv: list[str] | None = None) -> None:
    """Print the summary table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = run(args.calibration_fraction, args.seed)
    print()
    print(summary(results))


if __name__ == "__main__":
    main()
