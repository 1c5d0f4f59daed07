"""Sensitivity on a Dask cluster vs sequential, same process, same table.

MobileNetV2 (ImageNet weights), 2/4/6-bit per-tensor k-means candidates, PSNR of the
logits on calibration crops, the fast engine, no cache. Three runs in this process:

1. sequential with torch's default threads (what ``compute_sensitivity`` uses
   without an executor): the baseline of the speedup;
2. sequential with one torch thread (what each Dask worker uses: Dask's nanny starts
   workers with ``OMP_NUM_THREADS=1``): the table the cluster must reproduce bit for
   bit (convolutions round differently with other thread counts), and the
   sequential run's own 1-thread vs N-thread scaling;
3. ``LocalCluster(n_workers, processes=True, threads_per_worker=1)`` through
   ``client.get_executor()``: the model and the batches go to each worker once
   (``client.scatter(broadcast=True)``), each unit of work carries only layer names
   and compressed records, and clustering runs on the workers too.

Prints each run's time split into baseline / clustering / scoring, the speedup of
the cluster over run 1 (and over run 2), whether the cluster's table is identical
to run 2's (and how far run 1's scores are from it), the workers' torch threads,
the number of "Sending large graph" warnings (expected 0) and the load average.

    .venv/bin/python benchmarks/dask_bench.py                 # 32 crops, 2 workers
    .venv/bin/python benchmarks/dask_bench.py --crops 8 --layers 'features\\.1[0-7].*'   # a quick look
    .venv/bin/python benchmarks/dask_bench.py --scheduler tcp://10.0.0.5:8786   # an existing cluster
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import warnings


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _phases(table) -> str:
    s = table.meta["seconds"]
    return f"baseline {s['baseline']:.1f} s, clustering {s['cluster']:.1f} s, scoring {s['score']:.1f} s"


def _rows(table) -> list[tuple]:
    return [(r.layer, r.candidate, r.bits, r.score) for r in table.rows]


def _max_score_diff(a, b) -> float:
    diffs = [abs(x.score - y.score) for x, y in zip(a.rows, b.rows) if not (math.isinf(x.score) and x.score == y.score)]
    return max(diffs, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=32, help="calibration crops (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    parser.add_argument("--candidates", nargs="+", default=["2", "4", "6"], help="candidate labels")
    parser.add_argument("--layers", nargs="+", default=None, help="layer names/regexes (default: all 53)")
    parser.add_argument("--scheduler", default=None, help="address of a running scheduler instead of a LocalCluster")
    args = parser.parse_args()

    import torch
    from distributed import Client, LocalCluster

    from bitsmith.mixed_precision import compute_sensitivity
    from bitsmith_zoo.data import image_crops
    from bitsmith_zoo.mobilenet_v2 import load_mobilenet_v2

    model = load_mobilenet_v2().eval()
    data = image_crops(args.crops, split="calibration")
    kwargs = dict(candidates=args.candidates, layers=args.layers, cache_dir=None, progress=False)
    default_threads = torch.get_num_threads()
    print(f"MobileNetV2, {args.crops} crops, candidates {args.candidates}; {os.cpu_count()} CPUs, "
          f"load average before: {_load()}")

    start = time.perf_counter()
    sequential = compute_sensitivity(model, data, **kwargs)
    seq_s = time.perf_counter() - start
    print(f"1. sequential, {default_threads} torch threads (default): {seq_s:.1f} s ({_phases(sequential)}), "
          f"engine {sequential.meta['engine']}, {len(sequential.rows)} pairs; load {_load()}")

    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        single = compute_sensitivity(model, data, **kwargs)
        one_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(default_threads)
    print(f"2. sequential, 1 torch thread: {one_s:.1f} s ({_phases(single)}); {default_threads} threads are "
          f"{one_s / seq_s:.2f}x faster than 1; load {_load()}")

    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        if args.scheduler:
            cluster, client = None, Client(args.scheduler)
        else:
            cluster = LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1,
                                   dashboard_address=None, local_directory=scratch)
            client = Client(cluster)
        try:
            client.wait_for_workers(args.workers)
            startup_s = time.perf_counter() - start
            threads = sorted(client.run(torch.get_num_threads).values())
            workers = len(client.nthreads())
            start = time.perf_counter()
            pooled = compute_sensitivity(model, data, executor=client.get_executor(), **kwargs)
            par_s = time.perf_counter() - start
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    large = [w for w in caught if "Sending large graph" in str(w.message)]
    print(f"3. dask, {workers} workers (torch threads per worker: {threads}; cluster start {startup_s:.1f} s, not "
          f"counted): {par_s:.1f} s ({_phases(pooled)}), engine {pooled.meta['engine']}; 'Sending large graph' "
          f"warnings: {len(large)}; load {_load()}")
    print(f"speedup dask / sequential with {default_threads} threads: {seq_s / par_s:.2f}x (target >= 1.6x with 2 "
          f"workers on 2 cores); dask / sequential with 1 thread: {one_s / par_s:.2f}x")
    print(f"dask table identical to the 1-thread sequential table: {_rows(pooled) == _rows(single)}; "
          f"to the {default_threads}-thread one: {_rows(pooled) == _rows(sequential)} (largest score difference "
          f"{default_threads} vs 1 thread: {_max_score_diff(sequential, single):.3g} {sequential.unit})")
    for note in pooled.meta["engine_notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
