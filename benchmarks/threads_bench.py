"""Palettization on a busy machine: torch's default thread count against one thread (issue 15 item 7).

OpenMP oversubscription made one example take 16 minutes instead of 10 seconds on a
loaded 2-core machine: a parallel op waits for every thread of its team, and on a busy
machine one of them is often not running. The library therefore keeps per-group work
below torch's parallel grain size, sizes worker processes to the cores
(``bitsmith.palettization.workers``) and never changes the caller's thread count.

Each run is a fresh process that palettizes MobileNetV2 (4-bit, per-grouped-channel,
group 8: 2257 kernel calls) with ``num_workers`` 1 and, for a second workload, 2 worker
processes; first on the machine as it is, then with ``--busy`` extra processes spinning
(default: one per core). Printed: times and the loaded / as-is ratio for torch's default
thread count and for ``torch.set_num_threads(1)``; a ratio far above
``(busy + cores) / cores`` would mean oversubscription.

Run: ``.venv/bin/python benchmarks/threads_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

PROBE = r"""
import json, sys, time, torch
sys.path.insert(0, {bench_dir!r})
from palettize_bench import config, mobilenet_v2
from bitsmith.palettization import KMeansPalettizer
if {threads}:
    torch.set_num_threads({threads})
model = mobilenet_v2()
KMeansPalettizer(torch.nn.Sequential(torch.nn.Linear(64, 64)), config("per_tensor")).prepare(progress=False)
t0 = time.perf_counter()
KMeansPalettizer(model, config("per_grouped_channel")).prepare(progress=False, num_workers={workers})
print(json.dumps({{"seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}}))
"""


def spin() -> None:
    """Burn one core until killed."""
    while True:
        pass


def run(threads: int, workers: int) -> dict:
    """One palettization in a fresh interpreter."""
    code = PROBE.format(bench_dir=str(Path(__file__).resolve().parent), threads=threads, workers=workers)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="spinning processes for the load")
    args = parser.parse_args(argv)
    settings = [(0, 1), (1, 1), (0, 2)]  # (torch threads, 0 = default; num_workers)
    quiet = {s: run(*s) for s in settings}
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        time.sleep(1)
        loaded = {s: run(*s) for s in settings}
    finally:
        for p in spinners:
            p.terminate()
    print(f"{os.cpu_count()} cores, {args.busy} busy processes for the load")
    print(f"{'torch threads':<16}{'workers':>8}{'as is s':>10}{'loaded s':>10}{'ratio':>8}")
    for s in settings:
        label = f"{quiet[s]['threads']}" + (" (default)" if s[0] == 0 else "")
        print(f"{label:<16}{s[1]:>8}{quiet[s]['seconds']:>10.1f}{loaded[s]['seconds']:>10.1f}"
              f"{loaded[s]['seconds'] / quiet[s]['seconds']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
