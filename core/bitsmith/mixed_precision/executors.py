"""Sending scoring work to an executor: what travels once, what travels per unit.

Every scoring unit needs the same large objects (the model, the batches, the
reference output, the fx program): :class:`SharedScoring`. A unit of work is only
a list of :class:`~bitsmith.mixed_precision.engine.EvalTask` (layer names and
compressed records).

- Dask (``Client.get_executor()``): the shared part is scattered to every worker
  once (``client.scatter(..., broadcast=True)``); each unit refers to it by its
  future, so the scheduler never ships a model per task (no "Sending large graph"
  warnings) and works the same against a remote scheduler (``Client("tcp://...")``).
- Other executors (process or thread pools): each unit carries the shared part
  (pickled once per unit; units are few, about two per worker).

On the worker, each thread keeps one private copy of the model (weights are swapped
in place while scoring, so threads never share one) and, for the block engine, its
recorded call tree, reused by every unit that thread runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import threading
import uuid
from typing import Any, Callable, Optional

import torch
from attrs import define, field
from torch import nn

from .engine import EvalTask, EvalUnit, UnitResult, eval_mode, run_unit
from .inputs import Batch

__all__ = ["SharedScoring", "dask_client", "run_shared", "submitter"]


@define
class SharedScoring:
    """What every scoring unit of one ``compute_sensitivity`` call needs (sent once per worker on Dask)."""

    model: nn.Module
    batches: list[Batch]
    reference: torch.Tensor
    metric: Any
    output_fn: Callable[[Any], torch.Tensor]
    engine: str
    program: Any = None
    tensors: list[tuple[str, str]] = field(factory=list)
    """Every scored ``(module, tensor)``: a worker's block replay is recorded once for all of them."""
    token: str = field(factory=lambda: uuid.uuid4().hex)


_local = threading.local()


def _worker_unit(shared: SharedScoring, tasks: list[EvalTask], threads: Optional[int]) -> EvalUnit:
    """This thread's unit for ``tasks``: its own model copy (and block replay), made once per ``shared``."""
    cached = getattr(_local, "scoring", None)
    if cached is None or cached[0] != shared.token:
        model = copy.deepcopy(shared.model)
        program = shared.program
        if shared.engine == "block":
            from .blocks import BlockReplay, ReplayError

            program = BlockReplay(model, shared.batches, shared.output_fn, shared.tensors)
            try:
                with eval_mode(model):
                    program.prepare(shared.reference)
            except ReplayError:
                program = None  # run_unit records again and reports why it falls back
        cached = _local.scoring = (shared.token, model, program)
    _, model, program = cached
    return EvalUnit(model=model, batches=shared.batches, reference=shared.reference, metric=shared.metric,
                    output_fn=shared.output_fn, engine=shared.engine, tasks=tasks, threads=threads, program=program)


def run_shared(shared: SharedScoring, tasks: list[EvalTask], threads: Optional[int] = None) -> UnitResult:
    """Worker entry point: score ``tasks`` with the shared model and data (in eval mode, as :func:`run_unit` does)."""
    return run_unit(_worker_unit(shared, tasks, threads))


def dask_client(executor: cf.Executor) -> Any:
    """The ``distributed.Client`` behind a Dask ``ClientExecutor``, else ``None``."""
    client = getattr(executor, "_client", None)
    return client if client is not None and callable(getattr(client, "scatter", None)) else None


def submitter(executor: cf.Executor, shared: SharedScoring,
              threads: Optional[int]) -> Callable[[list[EvalTask]], cf.Future]:
    """``submit(tasks) -> Future[UnitResult]`` for ``executor``; on Dask the shared part is broadcast first."""
    client = dask_client(executor)
    if client is not None:
        ref = client.scatter(shared, broadcast=True, hash=False)
        return lambda tasks: executor.submit(run_shared, ref, tasks, threads)
    return lambda tasks: executor.submit(run_shared, shared, tasks, threads)
