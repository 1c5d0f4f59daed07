"""Whole-model palettization time against the time spent inside the clusterer (issue 15 item 1).

For each workload, ``KMeansPalettizer(model, config).prepare()`` runs end to end (copy,
planning, clustering, records, dense weights, report) while the registered ``"kmeans"``
clusterer is wrapped to sum the time spent in its calls: that sum is the kernel time,
and ``end-to-end / kernel`` is the overhead of everything around it (target <= 1.5).
Workloads (random weights, fixed seeds; no torchvision):

- ``resnet50``: a ResNet-50-shaped model (bottleneck blocks 3-4-6-3, 25.6M parameters,
  54 conv/linear weights), 4-bit per-tensor;
- ``mobilenet_v2``: MobileNetV2 (``bitsmith_zoo``'s architecture and pretrained weights),
  4-bit per-grouped-channel (group 8: the 1000-way classifier is not divisible by 16);
- ``linear4096``: one 4096x4096 Linear, 4-bit per-tensor.

Then the end-to-end comparison with scikit-learn on a subset: ``prepare()`` of a
``Linear(4096, 1024)`` holding N(0, 0.02) weights against ``sklearn.cluster.KMeans(16,
n_init=1)`` on the same 4M values (target >= 20x). Times are the best of ``--repeats``
after a warm-up (numba kernel compiled and cached). Exit status 1 if a target is missed.

Run: ``.venv/bin/python benchmarks/palettize_bench.py [--skip-sklearn] [--cases resnet50 ...]``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from typing import Any, Callable

import torch
from torch import nn


class TimedClusterer:
    """Wraps a clusterer and sums the wall time of its calls."""

    def __init__(self, inner: Callable) -> None:
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def __call__(self, x: Any, k: int, **kwargs: Any):
        t0 = time.perf_counter()
        try:
            return self.inner(x, k, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


class PeakRss:
    """Context manager measuring the highest RSS of this process inside the block (bytes).

    After the block: ``before`` (RSS on entry), ``peak`` and ``extra`` (``peak - before``).
    The peak is ``ru_maxrss`` when the block raised the process's peak, else the highest
    value of a psutil sampler polling every ``interval`` seconds (the block stayed under
    an earlier peak, which ``ru_maxrss`` cannot see past).
    """

    def __init__(self, interval: float = 0.001) -> None:
        import psutil

        self.interval, self._process = interval, psutil.Process()
        self._done, self._thread = threading.Event(), threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self._sampled = max(self._sampled, self._process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self.before = self._sampled = self._process.memory_info().rss
        self._max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = max_after if max_after > self._max_before else self._sampled
        self.extra = self.peak - self.before


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3, 1x1 convolutions, optional projection)."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.project = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.project is None else self.project(x)
        return torch.relu(self.body(x) + skip)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50's architecture (torchvision layout, 25.6M parameters) with seeded random weights."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, stride if b == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers).eval()


def linear(rows: int, cols: int) -> nn.Module:
    """One bias-free Linear with N(0, 0.02) weights (the kmeans benchmark's tensor for 4096x4096)."""
    layer = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)).mul_(0.02))
    return nn.Sequential(layer)


def mobilenet_v2() -> nn.Module:
    """MobileNetV2 from bitsmith_zoo (pretrained ImageNet weights)."""
    import bitsmith_zoo

    return bitsmith_zoo.load_mobilenet_v2().eval()


def config(granularity: str, group_size: int = 8) -> Any:
    """4-bit palettization of every supported layer's weight, per-tensor or per-grouped-channel (axis 0)."""
    from bitsmith.palettization import (KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, PalettizationSpec,
                                        PerGroupedChannelGranularity, PerTensorGranularity)

    gran = (PerGroupedChannelGranularity(axis=0, group_size=group_size) if granularity == "per_grouped_channel"
            else PerTensorGranularity())
    spec = PalettizationSpec(n_bits=4, granularity=gran)
    return KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec}))


def timed_prepare(model: nn.Module, cfg: Any, repeats: int) -> tuple[float, float, int, Any]:
    """Best end-to-end ``prepare()`` time, the kernel time of that run, its call count and its report."""
    from bitsmith.palettization import KMeansPalettizer

    best = None
    for _ in range(repeats):
        palettizer = KMeansPalettizer(model, cfg)
        timed = TimedClusterer(palettizer.clusterer())
        palettizer.clusterer = lambda timed=timed: timed
        t0 = time.perf_counter()
        palettizer.prepare(progress=False)
        total = time.perf_counter() - t0
        if best is None or total < best[0]:
            best = (total, timed.seconds, timed.calls, palettizer.report())
    return best


CASES: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "resnet50": (resnet50, "per_tensor"),
    "mobilenet_v2": (mobilenet_v2, "per_grouped_channel"),
    "linear4096": (lambda: linear(4096, 4096), "per_tensor"),
}


def sklearn_subset(repeats: int) -> tuple[float, float]:
    """End-to-end prepare of Linear(4096, 1024) vs scikit-learn KMeans on the same 4M values: (ours, sklearn) s."""
    from sklearn.cluster import KMeans

    model = linear(1024, 4096)
    ours, _, _, _ = timed_prepare(model, config("per_tensor"), repeats)
    data = model[0].weight.detach().reshape(-1, 1).numpy()
    t0 = time.perf_counter()
    KMeans(n_clusters=16, n_init=1, random_state=0).fit(data)
    return ours, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="timed prepare() runs per case (best is used)")
    parser.add_argument("--skip-sklearn", action="store_true", help="skip the scikit-learn comparison")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    from bitsmith.palettization import KMeansPalettizer

    KMeansPalettizer(linear(64, 64), config("per_tensor")).prepare(progress=False)  # compile / load the kernel
    failed = False
    print(f"{'case':<14}{'weights':>12}{'calls':>7}{'end-to-end s':>14}{'kernel s':>10}{'ratio':>8}  target <= 1.5")
    for name in args.cases:
        build, granularity = CASES[name]
        model = build()
        total, kernel, calls, report = timed_prepare(model, config(granularity), args.repeats)
        ratio = total / kernel
        failed |= ratio > 1.5
        print(f"{name:<14}{report.after.numel:>12}{calls:>7}{total:>14.3f}{kernel:>10.3f}{ratio:>8.2f}  "
              f"{'ok' if ratio <= 1.5 else 'MISSED'}")
    if not args.skip_sklearn:
        ours, theirs = sklearn_subset(args.repeats)
        failed |= theirs / ours < 20
        print(f"\nLinear(4096, 1024) end to end: ours {ours:.3f} s, scikit-learn KMeans(16, n_init=1) {theirs:.2f} s: "
              f"{theirs / ours:.1f}x faster (target >= 20x) {'ok' if theirs / ours >= 20 else 'MISSED'}")
    print("\nall targets met" if not failed else "\nSOME TARGETS MISSED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
