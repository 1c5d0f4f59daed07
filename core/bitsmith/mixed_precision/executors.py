"""Sending scoring work to an executor: what travels once, what travels per unit.

Every scoring unit needs the same large objects (the model, the batches, the fx
program): :class:`SharedScoring`. A unit of work is only a list of
:class:`~bitsmith.mixed_precision.engine.EvalTask` (layer names and compressed records).

- Dask (``Client.get_executor()``): the shared part is scattered to every worker
  once (``client.scatter(..., broadcast=True)``); each unit refers to it by its
  future, so the scheduler never ships a model per task (no "Sending large graph"
  warnings) and works the same against a remote scheduler (``Client("tcp://...")``).
- Other executors (process or thread pools): each unit carries the shared part
  (pickled once per unit; units are few, about two per worker).

Threads: a worker scores with the torch thread count of its process. Dask's nanny
starts every worker process with ``OMP_NUM_THREADS=1`` (one core per worker
thread), and that setting is left alone (as is its ``MALLOC_TRIM_THRESHOLD_``,
except while a unit runs: :mod:`~bitsmith.mixed_precision.worker_heap`); processes of a local
``ProcessPoolExecutor`` share this machine's cores out
(:func:`~bitsmith.palettization.workers.threads_per_worker`), so ``n`` workers
never run ``n x cores`` spinning OpenMP threads.

On the worker, each thread keeps, once per ``compute_sensitivity`` call, a private
copy of the model (weights are swapped in place while scoring, so threads never
share one), the reference output computed there, and for the block engine its
recorded call tree. The worker's own reference matters: convolutions round
differently with other thread counts or CPUs, and scores (and the exact engines'
checks against the baseline output) must compare outputs of the same arithmetic.
The table is then bit-identical to a sequential run with the workers' thread
count; :attr:`UnitResult.reference_diff` says how far the workers' reference was
from the caller's.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import threading
import uuid
from typing import Any, Callable, Optional, Sequence

import torch
from attrs import define, field
from torch import nn

from ..palettization.workers import threads_per_worker
from .engine import EvalTask, EvalUnit, UnitResult, eval_mode, run_unit
from .inputs import Batch, run_batches
from .worker_heap import tensor_heap

__all__ = ["SharedScoring", "dask_client", "executor_workers", "run_shared", "score_on", "submitter", "unit_threads"]


@define
class SharedScoring:
    """What every scoring unit of one ``compute_sensitivity`` call needs (sent once per worker on Dask)."""

    model: nn.Module
    batches: list[Batch]
    reference: torch.Tensor
    """The caller's reference output: workers compute their own and report the difference."""
    metric: Any
    output_fn: Callable[[Any], torch.Tensor]
    engine: str
    program: Any = None
    tensors: list[tuple[str, str]] = field(factory=list)
    """Every scored ``(module, tensor)``: a worker's block replay is recorded once for all of them."""
    threads: Optional[int] = None
    """Torch threads for the worker process (``None``: leave the process's own setting)."""
    token: str = field(factory=lambda: uuid.uuid4().hex)


@define
class _WorkerState:
    """One worker thread's copy of the model, its reference output and its program, for one ``token``."""

    token: str
    model: nn.Module
    reference: torch.Tensor
    reference_diff: float
    program: Any


_local = threading.local()


def _worker_state(shared: SharedScoring) -> _WorkerState:
    """This thread's state for ``shared``: made on its first unit, reused by the next ones."""
    state: Optional[_WorkerState] = getattr(_local, "scoring", None)
    if state is not None and state.token == shared.token:
        return state
    _local.scoring = None  # release the previous call's model copy before making a new one
    model = copy.deepcopy(shared.model)
    with eval_mode(model):
        reference = run_batches(model, shared.batches, shared.output_fn)
        program = shared.program
        if shared.engine == "block":
            from .blocks import BlockReplay, ReplayError

            program = BlockReplay(model, shared.batches, shared.output_fn, shared.tensors)
            try:
                program.prepare(reference)
            except ReplayError:
                program = None  # run_unit records again and reports why it falls back
    state = _local.scoring = _WorkerState(shared.token, model, reference, _max_diff(reference, shared.reference),
                                          program)
    return state


def _max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """0.0 when bit-identical, else the largest absolute difference (``inf`` for other shapes or NaN placement)."""
    if ours.shape != theirs.shape:
        return float("inf")
    if torch.equal(ours, theirs):
        return 0.0
    diff = (ours - theirs).abs()
    return float(diff.nan_to_num(nan=float("inf")).max())


def run_shared(shared: SharedScoring, tasks: list[EvalTask]) -> UnitResult:
    """Worker entry point: score ``tasks`` with the shared model and data, against this worker's own reference."""
    if shared.threads:
        torch.set_num_threads(shared.threads)
    with tensor_heap():
        state = _worker_state(shared)
        result = run_unit(EvalUnit(model=state.model, batches=shared.batches, reference=state.reference,
                                   metric=shared.metric, output_fn=shared.output_fn, engine=shared.engine,
                                   tasks=tasks, program=state.program))
    result.reference_diff = state.reference_diff
    return result


def dask_client(executor: cf.Executor) -> Any:
    """The ``distributed.Client`` behind a Dask ``ClientExecutor``, else ``None``."""
    client = getattr(executor, "_client", None)
    return client if client is not None and callable(getattr(client, "scatter", None)) else None


def executor_workers(executor: cf.Executor) -> int:
    """How many tasks ``executor`` runs at once (ProcessPool/ThreadPool, Dask; else 2)."""
    n = getattr(executor, "_max_workers", None)
    if isinstance(n, int) and n > 0:
        return n
    client = dask_client(executor)
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - any failure: fall back to the default
            pass
    return 2


def unit_threads(executor: cf.Executor) -> Optional[int]:
    """Torch threads a scoring worker of ``executor`` should use; ``None`` leaves its process's setting.

    Only the processes of a local ``ProcessPoolExecutor`` are set (the cores shared
    out among them). Threads of a ``ThreadPoolExecutor`` share this process, whose
    setting belongs to the caller; Dask workers keep their own (one thread each
    under Dask's nanny; a remote cluster knows its machines).
    """
    if isinstance(executor, cf.ProcessPoolExecutor):
        return threads_per_worker(executor_workers(executor))
    return None


def submitter(executor: cf.Executor, shared: SharedScoring) -> Callable[[list[EvalTask]], cf.Future]:
    """``submit(tasks) -> Future[UnitResult]`` for ``executor``; on Dask the shared part is broadcast first."""
    client = dask_client(executor)
    if client is not None:
        ref = client.scatter(shared, broadcast=True, hash=False)
        return lambda tasks: executor.submit(run_shared, ref, tasks)
    return lambda tasks: executor.submit(run_shared, shared, tasks)


def score_on(executor: cf.Executor, shared: SharedScoring, tasks: Sequence[EvalTask],
             emit: Callable[[int, int, float, float], None]) -> list[UnitResult]:
    """Score ``tasks`` on ``executor``: about two units per worker, ``emit`` each score as its unit finishes.

    Units interleave the layers (unit ``j`` of ``n`` gets tasks ``j, j + n, ...``):
    with the fast engine a layer near the input costs a nearly full forward pass per
    candidate and one near the output almost nothing, so contiguous runs of layers
    would leave one worker with most of the work. At most ``workers + 1`` units are
    in flight, which bounds the results held in memory.
    """
    workers = executor_workers(executor)
    n = min(len(tasks), 2 * workers)
    units = [list(tasks[j::n]) for j in range(n)]
    submit = submitter(executor, shared)
    pending = list(units)
    running: set[cf.Future] = set()
    results: list[UnitResult] = []
    while pending or running:
        while pending and len(running) < workers + 1:
            running.add(submit(pending.pop(0)))
        done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        for future in done:
            result = future.result()
            for li, ci, score, seconds in result.scores:
                emit(li, ci, score, seconds)
            results.append(result)
    return results
