"""Peak memory of whole-model palettization (issue 15 item 2), one fresh process per case.

Each case builds its model (weights initialised in place, so building leaves no
temporary peak), loads the k-means kernel, then runs ``KMeansPalettizer.prepare()``
(4-bit). The extra peak is the process's peak RSS during ``prepare()`` (``ru_maxrss``,
or a 1 ms psutil sampler when the building peak was higher) minus its RSS before, and
is printed over the fp32 size of the model (or of its largest layer). Targets:

- ``inplace=True``: extra peak <= 0.25 x model + 4 x largest layer (ResNet-50 shape,
  per-tensor). The records' uint8 indices are the 0.25; one layer's temporaries are
  the kernel's fp16 values and int64 labels (2.5 x the layer), its uint8 indices and
  its new dense values;
- a copy (``inplace=False``): extra peak <= 1 x model + 0.25 x model + 4 x largest layer;
- one 100M-weight ``Linear`` (10000 x 10000, 381 MiB fp32), in place: extra < 3 x its size.

Run: ``.venv/bin/python benchmarks/palettize_memory_bench.py [--cases ...]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MIB = 2**20

PROBE = r"""
import json, sys, time
import torch
sys.path.insert(0, {bench_dir!r})
from palettize_bench import PeakRss, config, resnet50
from bitsmith.palettization import KMeansPalettizer
from torch import nn

def build(name):
    if name == "linear100m":
        layer = nn.Linear(10000, 10000, bias=False)
        return nn.Sequential(layer)
    return resnet50()

KMeansPalettizer(nn.Sequential(nn.Linear(64, 64)), config("per_tensor")).prepare(progress=False)
model = build({case!r})
weights = [p for p in model.parameters() if p.dim() > 1]
fp32 = sum(p.numel() for p in model.parameters()) * 4
largest = max(p.numel() for p in weights) * 4
with PeakRss() as rss:
    t0 = time.perf_counter()
    KMeansPalettizer(model, config("per_tensor")).prepare(inplace={inplace}, progress=False)
    seconds = time.perf_counter() - t0
print(json.dumps({{"extra": rss.extra, "fp32": fp32, "largest": largest, "seconds": seconds}}))
"""

CASES = {
    "resnet50-inplace": ("resnet50", True, lambda m, l: 0.25 * m + 4 * l),
    "resnet50-copy": ("resnet50", False, lambda m, l: 1.25 * m + 4 * l),
    "linear100m-inplace": ("linear100m", True, lambda m, l: 3 * m),
}


def measure(case: str, inplace: bool) -> dict:
    """Run one case in a fresh interpreter and return its JSON line."""
    code = PROBE.format(bench_dir=str(Path(__file__).resolve().parent), case=case, inplace=inplace)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{case}: probe failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    args = parser.parse_args(argv)
    failed = False
    print(f"{'case':<20}{'fp32 MiB':>10}{'largest MiB':>12}{'extra MiB':>11}{'extra/model':>12}{'limit MiB':>11}"
          f"{'time s':>8}")
    for name in args.cases:
        case, inplace, limit = CASES[name]
        r = measure(case, inplace)
        bound = limit(r["fp32"], r["largest"])
        ok = r["extra"] <= bound
        failed |= not ok
        print(f"{name:<20}{r['fp32'] / MIB:>10.0f}{r['largest'] / MIB:>12.1f}{r['extra'] / MIB:>11.0f}"
              f"{r['extra'] / r['fp32']:>12.2f}{bound / MIB:>11.0f}{r['seconds']:>8.1f}  {'ok' if ok else 'MISSED'}")
    print("\nall targets met" if not failed else "\nSOME TARGETS MISSED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
