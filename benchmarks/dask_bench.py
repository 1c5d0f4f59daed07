"""Sensitivity on a Dask cluster vs sequential, same process, same table.

MobileNetV2 (ImageNet weights), 2/4/6-bit per-tensor k-means candidates, PSNR of the
logits on calibration crops, the fast engine, no cache. First sequentially in this
process (torch's default threads), then on ``LocalCluster(n_workers, processes=True,
threads_per_worker=1)`` through ``client.get_executor()``: the model, the batches and
the reference output go to each worker once (``client.scatter(broadcast=True)``),
each unit of work carries only layer names and compressed records. Prints both
times, the ratio, whether the tables are identical, how many "Sending large graph"
warnings the client raised (expected 0) and the load average it ran under.

    .venv/bin/python benchmarks/dask_bench.py                 # 32 crops, 2 workers
    .venv/bin/python benchmarks/dask_bench.py --scheduler tcp://10.0.0.5:8786   # an existing cluster
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings


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
    print(f"MobileNetV2, {args.crops} crops, candidates {args.candidates}; {os.cpu_count()} CPUs, "
          f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    start = time.perf_counter()
    sequential = compute_sensitivity(model, data, **kwargs)
    seq_s = time.perf_counter() - start
    print(f"sequential ({torch.get_num_threads()} torch threads): {seq_s:.1f} s, engine {sequential.meta['engine']}, "
          f"{len(sequential.rows)} pairs")

    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.scheduler:
            cluster, client = None, Client(args.scheduler)
        else:
            cluster = LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1,
                                   dashboard_address=None, local_directory=scratch)
            client = Client(cluster)
        try:
            client.wait_for_workers(1)
            workers = len(client.nthreads())
            start = time.perf_counter()
            pooled = compute_sensitivity(model, data, executor=client.get_executor(), **kwargs)
            par_s = time.perf_counter() - start
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    large = [w for w in caught if "Sending large graph" in str(w.message)]
    print(f"dask ({workers} workers): {par_s:.1f} s, engine {pooled.meta['engine']}; 'Sending large graph' "
          f"warnings: {len(large)}")
    same = [(r.layer, r.candidate, r.bits, r.score) for r in sequential.rows] == [
        (r.layer, r.candidate, r.bits, r.score) for r in pooled.rows]
    print(f"speedup dask / sequential: {seq_s / par_s:.2f}x (target >= 1.6x with 2 workers on 2 cores); "
          f"tables identical: {same}; load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
