"""Worker processes for clustering, sized so they never oversubscribe the CPU."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(num_workers: int) -> int:
    """Torch intra-op threads for each of ``num_workers`` processes: the cores shared out, at least 1."""
    return max(1, available_cores() // max(1, num_workers))


def worker_pool(num_workers: int) -> cf.ProcessPoolExecutor:
    """``num_workers`` spawned processes, each limited to :func:`threads_per_worker` torch threads.

    Without the limit every worker starts one OpenMP thread per core, so ``n`` workers
    run ``n x cores`` spinning threads on ``cores`` CPUs. Only these worker processes
    are configured; the caller's thread settings are left as they are.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers: expected a positive integer, got {num_workers!r}")
    return cf.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_limit_threads, initargs=(threads_per_worker(num_workers),))


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
