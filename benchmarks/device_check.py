"""Device check: the sensitivity stage, k-means palettization and GPTQ on CUDA, compared with the CPU.

Runs each piece of work on a small CNN on the CPU and, when ``torch.cuda.is_available()``,
again on the model placed on ``cuda`` (the weights' device): ``compute_sensitivity``
(fast engine and ``device="cuda"``), ``KMeansPalettizer.prepare()`` and
``GPTQPalettizer.prepare()``. Prints where each result's tensors live, the time on
each device and how close the CUDA results are to the CPU ones (same LUT sizes; scores
and outputs within float tolerance, not bit for bit). Without CUDA it says
"no CUDA device" and checks the CPU path only.

    .venv/bin/python benchmarks/device_check.py
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


def _run(model: nn.Module, data: torch.Tensor, device: str) -> dict:
    from bitsmith import compressed
    from bitsmith.config import KMeansPalettizerConfig
    from bitsmith.mixed_precision import compute_sensitivity
    from bitsmith.palettization import KMeansPalettizer
    from bitsmith_gptq import GPTQPalettizer

    model = copy.deepcopy(model).to(device)
    x = data.to(device)
    out: dict = {}
    start = time.perf_counter()
    table = compute_sensitivity(model, x, [2, 4], cache_dir=None, progress=False)
    out["sensitivity"] = (time.perf_counter() - start, [r.score for r in table.rows], table.meta["engine"])
    config = KMeansPalettizerConfig()  # 4-bit per-tensor everywhere
    for name, cls, kwargs in (("kmeans", KMeansPalettizer, {}), ("gptq", GPTQPalettizer, {"example_inputs": [x]})):
        start = time.perf_counter()
        small = cls(model, config).prepare(**kwargs)
        with torch.inference_mode():
            y = small(x).float().cpu()
        rec = compressed.records(small[0])["weight"]
        out[name] = (time.perf_counter() - start, y, f"indices on {rec.indices.device}, lut on {rec.lut.device}")
    return out


def main() -> None:
    data = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = _model()
    cpu = _run(model, data, "cpu")
    print(f"cpu : sensitivity {cpu['sensitivity'][0]:.2f} s ({cpu['sensitivity'][2]} engine), "
          f"kmeans {cpu['kmeans'][0]:.2f} s ({cpu['kmeans'][2]}), gptq {cpu['gptq'][0]:.2f} s ({cpu['gptq'][2]})")
    if not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False; only the CPU path was checked")
        return
    cuda = _run(model, data, "cuda")
    print(f"cuda ({torch.cuda.get_device_name()}): sensitivity {cuda['sensitivity'][0]:.2f} s "
          f"({cuda['sensitivity'][2]} engine), kmeans {cuda['kmeans'][0]:.2f} s ({cuda['kmeans'][2]}), "
          f"gptq {cuda['gptq'][0]:.2f} s ({cuda['gptq'][2]})")
    diffs = [abs(a - b) for a, b in zip(cpu["sensitivity"][1], cuda["sensitivity"][1])]
    print(f"sensitivity scores, cuda vs cpu: max |diff| {max(diffs):.3g} dB over {len(diffs)} pairs")
    for name in ("kmeans", "gptq"):
        ref, got = cpu[name][1], cuda[name][1]
        rel = ((got - ref).norm() / ref.norm()).item()
        print(f"{name}: compressed model output, cuda vs cpu: relative difference {rel:.3g}")
    placed = compute_sensitivity_on(model, data)
    print(f"compute_sensitivity(cpu model, device='cuda'): engine {placed}")


def compute_sensitivity_on(model: nn.Module, data: torch.Tensor) -> str:
    """Score a CPU model with ``device="cuda"`` (a copy is placed there); returns the engine used."""
    from bitsmith.mixed_precision import compute_sensitivity

    table = compute_sensitivity(model, data, [4], cache_dir=None, progress=False, device="cuda")
    assert next(model.parameters()).device.type == "cpu"
    return table.meta["engine"]


if __name__ == "__main__":
    main()
