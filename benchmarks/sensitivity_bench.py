"""Sensitivity engine speed: naive full re-evaluation vs the fast torch.fx engine, same run, same table.

MobileNetV2 (ImageNet weights), 2/4/6-bit per-tensor k-means candidates, PSNR of the
logits on calibration crops. Both engines cluster every (layer, candidate) pair
themselves (same cost) and score all 159 pairs; the cache is off. Prints each stage's
time, the speedup of the scoring stage and of the whole call, and whether the two
tables are identical (bit for bit) or their largest score difference.

    ./run bench sensitivity_bench               # 64 crops (the issue's setting)
    ./run bench sensitivity_bench --crops 16 --layers 'features\\.1[6-8].*'   # quick
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=64, help="calibration crops (default 64)")
    parser.add_argument("--candidates", nargs="+", default=["2", "4", "6"], help="candidate labels")
    parser.add_argument("--layers", nargs="+", default=None, help="layer names/regexes (default: all 53)")
    args = parser.parse_args()

    from bitsmith.mixed_precision import compute_sensitivity
    from bitsmith_zoo.data import image_crops
    from bitsmith_zoo.mobilenet_v2 import load_mobilenet_v2

    model = load_mobilenet_v2().eval()
    data = image_crops(args.crops, split="calibration")
    print(f"MobileNetV2, {args.crops} crops, candidates {args.candidates}, torch threads {torch.get_num_threads()}")
    tables, totals, cpu = {}, {}, {}
    for engine in ("naive", "fast"):
        start, start_cpu = time.perf_counter(), time.process_time()
        tables[engine] = compute_sensitivity(model, data, args.candidates, engine=engine, layers=args.layers,
                                             cache_dir=None)
        totals[engine], cpu[engine] = time.perf_counter() - start, time.process_time() - start_cpu
        s = tables[engine].meta["seconds"]
        print(f"{engine:>5}: total {totals[engine]:7.1f} s wall ({cpu[engine]:7.1f} s CPU) = baseline "
              f"{s['baseline']:.1f} + cluster {s['cluster']:.1f} + score {s['score']:.1f} s "
              f"({tables[engine].meta['pairs']} pairs, engine used: {tables[engine].meta['engine']})")
    naive, fast = tables["naive"], tables["fast"]
    score_ratio = naive.meta["seconds"]["score"] / fast.meta["seconds"]["score"]
    print(f"speedup, scoring stage: {score_ratio:.2f}x   whole compute_sensitivity: "
          f"{totals['naive'] / totals['fast']:.2f}x wall, {cpu['naive'] / cpu['fast']:.2f}x CPU time   "
          f"(target >= 3x)")
    same_rows = [(r.layer, r.candidate, r.bits) for r in naive.rows] == [(r.layer, r.candidate, r.bits)
                                                                          for r in fast.rows]
    diffs = [abs(a.score - b.score) for a, b in zip(naive.rows, fast.rows)
             if not (a.score == b.score or (math.isinf(a.score) and a.score == b.score))]
    if same_rows and not diffs:
        print(f"tables identical: {len(naive.rows)} rows, every score bit-for-bit equal")
    else:
        print(f"tables differ: same rows {same_rows}, {len(diffs)} scores differ, max |diff| "
              f"{max(diffs, default=0.0):.3g} dB")
    print(fast.format(3))


if __name__ == "__main__":
    main()
