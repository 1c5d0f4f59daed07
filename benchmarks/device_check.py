"""Device check: sensitivity, k-means, GPTQ, DKM and Sensitive K-Means on CUDA, compared with the CPU.

Runs each piece of work on a small CNN on the CPU and, when ``torch.cuda.is_available()``,
again on the model placed on ``cuda`` (the weights' device): ``compute_sensitivity``
(fast engine), ``KMeansPalettizer.prepare()``, ``GPTQPalettizer.prepare()``,
``DKMPalettizer.prepare()`` plus three training steps and ``snap()``, and
``SKMPalettizer.compute_sensitivity()`` (the Fisher) plus ``prepare()``, and the
``"dkm"`` soft k-means clusterer called on a tensor on that device. Prints where
each result's tensors live, the time on each device and how close the CUDA results are
to the CPU ones (same LUT sizes; scores, sensitivities and outputs within float
tolerance, not bit for bit). Then the ``device=`` arguments on a CPU model:
``compute_sensitivity(device="cuda")``, ``DKMPalettizer.prepare(device="cuda")`` and
``SKMPalettizer.compute_sensitivity(device="cuda")`` (work placed on the GPU, the CPU
model left where it is). Without CUDA it says "no CUDA device" and checks the CPU path
only.

    .venv/bin/python benchmarks/device_check.py
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch
from torch import nn


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


def _where(small: nn.Module) -> str:
    from bitsmith import compressed

    rec = compressed.records(small[0])["weight"]
    return f"indices on {rec.indices.device}, lut on {rec.lut.device}, weights on {small[0].weight.device}"


def _output(small: nn.Module, x: torch.Tensor) -> torch.Tensor:
    small.eval()
    with torch.inference_mode():
        return small(x).float().cpu()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def _dkm(model: nn.Module, x: torch.Tensor, config: Any, **prepare: Any) -> nn.Module:
    """DKM: prepare, three SGD steps on a fixed objective, snap; returns the snapped model."""
    from bitsmith_dkm import DKMPalettizer

    palettizer = DKMPalettizer(model, config)
    trainable = palettizer.prepare(**prepare)
    optimizer = torch.optim.SGD(trainable.parameters(), lr=0.01)
    trainable.train()
    data = x.to(next(trainable.parameters()).device)
    for _ in range(3):
        loss = trainable(data).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return palettizer.snap()


def _skm(model: nn.Module, x: torch.Tensor, config: Any, **calibrate: Any) -> tuple[nn.Module, torch.Tensor]:
    """Sensitive K-Means: the Fisher on the calibration batch, then prepare; returns the model and the Fisher."""
    from bitsmith_sensitive_kmeans import SKMPalettizer

    palettizer = SKMPalettizer(model, config)
    sens = palettizer.compute_sensitivity([x], num_samples=x.shape[0], **calibrate)
    return palettizer.prepare(), sens.flat


def _run(model: nn.Module, data: torch.Tensor, device: str) -> dict:
    from bitsmith.config import KMeansPalettizerConfig
    from bitsmith.mixed_precision import compute_sensitivity
    from bitsmith.palettization import KMeansPalettizer
    from bitsmith_gptq import GPTQPalettizer

    model = copy.deepcopy(model).to(device)
    x = data.to(device)
    out: dict = {}
    seconds, table = _timed(lambda: compute_sensitivity(model, x, [2, 4], cache_dir=None, progress=False))
    out["sensitivity"] = (seconds, [r.score for r in table.rows], f"{table.meta['engine']} engine")
    config = KMeansPalettizerConfig()  # 4-bit per-tensor everywhere
    for name, cls, kwargs in (("kmeans", KMeansPalettizer, {}), ("gptq", GPTQPalettizer, {"example_inputs": [x]})):
        seconds, small = _timed(lambda: cls(model, config).prepare(**kwargs))
        out[name] = (seconds, _output(small, x), _where(small))
    seconds, small = _timed(lambda: _dkm(model, data, config))
    out["dkm"] = (seconds, _output(small, x), _where(small))
    seconds, (small, fisher) = _timed(lambda: _skm(model, x, config))
    out["skm"] = (seconds, _output(small, x), f"{_where(small)}, fisher on {fisher.device}")
    out["fisher"] = fisher.cpu()
    from bitsmith_dkm import SoftKMeansClusterer

    rows = model[0].weight.detach().reshape(-1, 1)
    seconds, (centroids, labels) = _timed(lambda: SoftKMeansClusterer()(rows, 16, seed=0))
    out["soft_kmeans"] = (seconds, centroids.cpu(), labels.cpu(), f"centroids on {centroids.device}")
    return out


NAMES = ("kmeans", "gptq", "dkm", "skm")


def _summary(label: str, result: dict) -> str:
    parts = [f"sensitivity {result['sensitivity'][0]:.2f} s ({result['sensitivity'][2]})"]
    parts += [f"{name} {result[name][0]:.2f} s ({result[name][2]})" for name in NAMES]
    soft = result["soft_kmeans"]
    parts.append(f"dkm clusterer {soft[0]:.2f} s ({soft[3]})")
    return f"{label}: " + "\n      ".join(parts)


def _relative(ref: torch.Tensor, got: torch.Tensor) -> float:
    return ((got - ref).norm() / ref.norm()).item()


def main() -> None:
    data = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = _model()
    cpu = _run(model, data, "cpu")
    print(_summary("cpu ", cpu))
    if not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False; only the CPU path was checked")
        return
    cuda = _run(model, data, "cuda")
    print(_summary(f"cuda ({torch.cuda.get_device_name()})", cuda))
    diffs = [abs(a - b) for a, b in zip(cpu["sensitivity"][1], cuda["sensitivity"][1])]
    print(f"sensitivity scores, cuda vs cpu: max |diff| {max(diffs):.3g} dB over {len(diffs)} pairs")
    for name in NAMES:
        print(f"{name}: compressed model output, cuda vs cpu: relative difference "
              f"{_relative(cpu[name][1], cuda[name][1]):.3g}")
    print(f"skm: Fisher (per-weight sensitivities), cuda vs cpu: relative difference "
          f"{_relative(cpu['fisher'], cuda['fisher']):.3g}")
    same = (cpu["soft_kmeans"][2] == cuda["soft_kmeans"][2]).float().mean().item()
    print(f"dkm clusterer, cuda vs cpu: centroids relative difference "
          f"{_relative(cpu['soft_kmeans'][1], cuda['soft_kmeans'][1]):.3g}, same label for {same:.1%} of the rows")
    placed_on_cuda(model, data, cpu)


def placed_on_cuda(model: nn.Module, data: torch.Tensor, cpu: dict) -> None:
    """The ``device="cuda"`` arguments on a CPU model: work runs on the GPU, ``model`` stays on the CPU."""
    from bitsmith.config import KMeansPalettizerConfig
    from bitsmith.mixed_precision import compute_sensitivity

    config = KMeansPalettizerConfig()
    table = compute_sensitivity(model, data, [4, "4-bit +scale @gptq"], cache_dir=None, progress=False,
                                device="cuda")
    print(f"compute_sensitivity(cpu model, device='cuda', k-means and GPTQ candidates): {table.meta['engine']} engine")
    small = _dkm(model, data, config, device="cuda")
    print(f"DKMPalettizer.prepare(device='cuda'): {_where(small)}; output vs cpu run: relative difference "
          f"{_relative(cpu['dkm'][1], _output(small, data.cuda())):.3g}")
    small, fisher = _skm(model, data, config, device="cuda")
    print(f"SKMPalettizer.compute_sensitivity(device='cuda'): fisher on {fisher.device}, vs cpu: relative "
          f"difference {_relative(cpu['fisher'], fisher.cpu()):.3g}; {_where(small)}")
    assert all(p.device.type == "cpu" for p in model.parameters()), "a device= call moved the caller's model"


if __name__ == "__main__":
    main()
