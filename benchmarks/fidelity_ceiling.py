"""How much fidelity the broad evaluation set allows: near-lossless weight changes, no search.

Issue 17's targets are agreement (or cosine) with the fp32 model on the broad set. On
crops where fp32 is unsure, its top-1 class wins by a hair and the smallest change of
the weights can flip it. This script measures that floor on each task by changing
only the weights compression would touch (Conv2d, Linear and Embedding weights) in
ways far smaller than any 4-bit format:

- rounded to bfloat16 (16 bits per weight, relative error up to 2^-9);
- rounded to float8 e4m3 (8 bits per weight, no scale);
- multiplied by ``1 + s * N(0, 1)`` for s = 0.1% and 0.3% (seed 0);
- uniform 8-bit per-tensor k-means (``KMeansPalettizer``, 256-entry LUT per tensor).

A compressed model at 4 BPW cannot be expected to agree with fp32 more often than a
bf16 copy of it does. Prints held-out and broad fidelity, broad KL and the three fp32
confidence strata for each row; no calibration data is used.

    ./run bench fidelity_ceiling                       # all three tasks (about a minute each)
    ./run bench fidelity_ceiling --task mobilenet_v2
"""

from __future__ import annotations

import argparse
import copy
from typing import Callable

import torch
from torch import nn

NOISE_SEED = 0


def compressible_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights a palettizer would compress: those of Conv2d, Linear and Embedding modules."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]


def changed(model: nn.Module, change: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose compressible weights are replaced by ``change(weight)``."""
    copied = copy.deepcopy(model)
    torch.manual_seed(NOISE_SEED)
    with torch.no_grad():
        for weight in compressible_weights(copied):
            weight.copy_(change(weight))
    return copied


def float8(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to float8 e4m3 (saturating at its largest finite value, 448)."""
    return weight.clamp(-448, 448).to(torch.float8_e4m3fn).float()


def noisy(scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A change multiplying every weight by ``1 + scale * N(0, 1)``."""
    return lambda weight: weight * (1 + scale * torch.randn_like(weight))


def rows(task) -> list[tuple[str, nn.Module]]:
    """``(label, changed model)`` for each reference change of ``task.model``."""
    from bitsmith.palettization import KMeansPalettizer, KMeansPalettizerConfig

    return [
        ("weights rounded to bf16 (16 bits)", changed(task.model, lambda w: w.bfloat16().float())),
        ("weights rounded to fp8 e4m3 (8 bits)", changed(task.model, float8)),
        ("weights x (1 + 0.1% noise)", changed(task.model, noisy(1e-3))),
        ("weights x (1 + 0.3% noise)", changed(task.model, noisy(3e-3))),
        ("uniform 8-bit per-tensor k-means", KMeansPalettizer(task.model, KMeansPalettizerConfig.presets.w8()).prepare()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["all", "mobilenet_v2", "minilm", "efficientnet_lite0"], default="all")
    args = parser.parse_args()

    from bitsmith.table import format_table
    from bitsmith_zoo.fidelity import TASKS

    for name in list(TASKS) if args.task == "all" else [args.task]:
        task = TASKS[name]()
        print(f"\n{task.title}; fidelity = {task.measure} with fp32; broad set: {task.broad.description}")
        table = []
        for label, model in rows(task):
            broad = task.breakdown(model)
            strata = [f"{value:.3f}" for _, value, _ in broad.strata.values()] or ["", "", ""]
            table.append((label, f"{task.fidelity(model):.4f}", f"{broad.measure:.4f}",
                          "" if broad.kl is None else f"{broad.kl:.4f}", *strata))
        print(format_table(["Weights", f"held-out {task.measure}", f"broad {task.measure}", "broad KL",
                            "fp32 p < 0.3", "0.3-0.6", "> 0.6"], table, align="lrrrrrr"))


if __name__ == "__main__":
    main()
