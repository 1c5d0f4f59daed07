"""Model-level palettization shared by every palettizer class.

``Palettizer(model, config).prepare()`` resolves a spec for every tensor (seed 003
precedence), checks every layer up front (an impossible layer fails before any
clustering, naming the layer), clusters each tensor with the registered clusterer
named by :attr:`Palettizer.algorithm` — sequentially, on ``num_workers`` processes
or on any ``concurrent.futures.Executor``, with identical results — and attaches
:class:`~bitsmith.compressed.PalettizedTensor` records. Subclasses (SKM, DKM) add
sample weights or training; the kmeans plugin's ``KMeansPalettizer`` is this class.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any, ClassVar, Iterator, Optional, Union

import attrs
import numpy as np
import torch
from torch import nn

from .. import compressed, plugins
from ..config import KMeansPalettizerConfig, load
from ..coverage import check_coverage, fit_spec
from ..errors import CompressionError, ConfigError
from ..export import ExportBackend, finalize as export_finalize
from ..progress import progress_bar
from ..resolve import ResolvedTensor, check_materialized, resolve_state_specs
from ..sizes import TensorSize, dense_size, model_size
from .memory import copy_for_compression
from .report import LayerReport, PalettizationReport, layer_report
from .workers import worker_pool
from .tensor import all_finite, check_palettizable, palettize_tensor


class Palettizer:
    """Post-training palettization of a model with a registered clusterer.

    :param model: the model to compress (not modified unless ``prepare(inplace=True)``).
    :param config: a ``KMeansPalettizerConfig``, a dict, a YAML path, or ``None``
        for the default (4-bit per-tensor for every supported layer).
    :param registry: the plugin registry to resolve the clusterer and backends in.
    """

    algorithm: ClassVar[str] = "kmeans"
    config_class: ClassVar[type[KMeansPalettizerConfig]] = KMeansPalettizerConfig

    def __init__(self, model: nn.Module, config: Any = None, *, registry: Optional[plugins.Registry] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = self.config_class() if config is None else load(config, self.config_class)
        if not isinstance(self.config, self.config_class):
            raise ConfigError(f"config: expected a {self.config_class.__name__}, got {type(self.config).__name__}")
        self.config.check_algorithm(self.algorithm)  # scopes naming another algorithm: bitsmith.palettization.palettize
        self.registry = registry or plugins.default_registry()
        self.prepared_model: Optional[nn.Module] = None
        self._report: Optional[PalettizationReport] = None

    # ------------------------------------------------------------------ planning

    def plan(self, model: Optional[nn.Module] = None) -> list[ResolvedTensor]:
        """The tensors that will be compressed (one per shared tensor), checked against their specs.

        A spec that does not fit its tensor follows the config's ``on_incompatible``
        (:func:`bitsmith.coverage.fit_spec`); what was skipped or changed is kept in
        :attr:`plan_notes` (qualified name -> note) for the report's coverage.
        """
        model = self.model if model is None else model
        seen, targets, meta = set(), [], []
        self.plan_notes: dict[str, str] = {}
        for item in resolve_state_specs(model, self.config):
            if item.spec is None:
                continue
            tensor = getattr(item.module, item.tensor_name)
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if tensor.is_meta:
                meta.append((item.qualified_name, tensor))
                continue
            if not tensor.is_floating_point():
                raise CompressionError(f"{item.qualified_name}: cannot palettize a {tensor.dtype} tensor")
            if not all_finite(tensor):
                raise CompressionError(f"{item.qualified_name}: has NaN or infinite values; cannot palettize it")
            spec, note = fit_spec(tuple(tensor.shape), item.spec, item.on_incompatible, item.qualified_name)
            if note:
                self.plan_notes[item.qualified_name] = note
            if spec is not None:
                targets.append(item if spec is item.spec else attrs.evolve(item, spec=spec))
        check_materialized(meta, "palettize")
        return targets

    def sample_weight(self, item: ResolvedTensor) -> Optional[torch.Tensor]:
        """Per-element importance for ``item`` (``None``: plain squared error). SKM overrides this."""
        return None

    def clusterer(self) -> Any:
        """The clusterer :meth:`prepare` uses: the one registered as :attr:`algorithm` (subclasses may bind it)."""
        return self.registry.get("cluster", self.algorithm)

    def finish_record(self, item: ResolvedTensor, record: compressed.PalettizedTensor) -> compressed.PalettizedTensor:
        """Last change to a tensor's record before it is attached (SKM adds sparse outliers); identity here.

        Called in :meth:`prepare` while ``item``'s tensor still holds its original values.
        """
        return record

    def cluster_targets(self, targets: list[ResolvedTensor], clusterer: Any = None, *, num_workers: int = 1,
                        executor: Optional[cf.Executor] = None, progress: Optional[bool] = None,
                        seed: Optional[int] = None) -> list[compressed.PalettizedTensor]:
        """Palettize every tensor of ``targets`` (from :meth:`plan`) and return the records, attaching nothing.

        ``clusterer`` defaults to :meth:`clusterer`; sample weights come from
        :meth:`sample_weight`. Parallelism as in :meth:`prepare`.
        """
        return list(self.iter_records(targets, clusterer, num_workers=num_workers, executor=executor,
                                      progress=progress, seed=seed))

    def iter_records(self, targets: list[ResolvedTensor], clusterer: Any = None, *, num_workers: int = 1,
                     executor: Optional[cf.Executor] = None, progress: Optional[bool] = None,
                     seed: Optional[int] = None) -> Iterator[compressed.PalettizedTensor]:
        """Yield the record of each tensor of ``targets`` in order, as :meth:`cluster_targets` computes them.

        Sequentially, each tensor is read (as float32) only when its turn comes, so a
        caller that consumes one record before asking for the next holds one layer's
        temporaries at a time. With workers every payload is submitted up front.
        """
        clusterer = self.clusterer() if clusterer is None else clusterer
        jobs = (self._job(t, seed) for t in targets)
        bar = progress_bar(total=len(targets), desc=f"palettize ({self.algorithm})", unit="layer", enabled=progress)
        own = None
        if executor is None and num_workers > 1 and len(targets) > 1:
            own = executor = worker_pool(num_workers)
        try:
            with bar:
                if executor is None:
                    for job in jobs:
                        bar.set_postfix_str(job.name, refresh=False)
                        record = _run_job(job, clusterer)
                        del job
                        bar.update()
                        yield record
                    return
                futures = [executor.submit(_run_job, job, clusterer) for job in jobs]
                for future in futures:
                    yield future.result()
                    bar.update()
        finally:
            if own is not None:
                own.shutdown()

    # ------------------------------------------------------------------ prepare

    def prepare(self, example_inputs: Any = None, *, inplace: bool = False, num_workers: int = 1,
                executor: Optional[cf.Executor] = None, progress: Optional[bool] = None,
                seed: Optional[int] = None) -> nn.Module:
        """Return the model with palettized weights in effect (eager PyTorch).

        Layers are palettized one after the other: each tensor is clustered, its
        record attached and its dense values replaced before the next one is read.
        Memory: with ``inplace=True`` the extra peak is the records' uint8 indices
        (one byte per compressed weight) plus a few times the largest layer;
        without it, :func:`copy_for_compression` copies everything except the
        tensors to compress (shared with ``self.model`` until their palettized
        values replace them in the copy), so the extra peak stays below one model
        copy plus the indices. The report is built from the dense values that are
        written anyway (one dequantize per tensor, SQNR in float32 chunks, LUT
        entries from the LUTs alone; no sort of the weights).

        :param example_inputs: accepted for API symmetry with quantizers; data-free
            palettizers do not run the model.
        :param inplace: modify ``self.model`` instead of a copy. If a clusterer fails
            part-way (every layer is checked up front, so only a clusterer's own
            error can), the layers before it stay palettized.
        :param num_workers: > 1 clusters layers in that many spawned processes (see
            :func:`worker_pool` for their thread counts; payloads are all submitted up
            front, so this trades memory for speed).
        :param executor: any ``concurrent.futures.Executor`` (overrides ``num_workers``).
        :param progress: show a progress bar (default: when stderr is a terminal).
        :param seed: seed for randomized clusterers (vector k-means); scalar
            k-means is deterministic.
        """
        targets = self.plan(self.model)
        model = self.model
        if not inplace:
            model = copy_for_compression(self.model, [getattr(t.module, t.tensor_name) for t in targets])
            targets = [attrs.evolve(t, module=model.get_submodule(t.module_name)) for t in targets]
        rows, before_bits, owners = [], 0, _owners(model)
        records = self.iter_records(targets, num_workers=num_workers, executor=executor, progress=progress,
                                    seed=seed)
        for target, record in zip(targets, records):
            rows.append(self._apply(owners, target, record))
            before_bits += dense_size(rows[-1].shape, getattr(target.module, target.tensor_name).dtype).total_bits
        self._report = _make_report(rows, before_bits, model)
        self._report.coverage = check_coverage(model, self.config, self.plan_notes)
        self.prepared_model = model
        return model

    def _apply(self, owners: dict[int, list[tuple[nn.Module, str]]], target: ResolvedTensor,
               record: compressed.PalettizedTensor) -> LayerReport:
        """Finish, attach (to every owner of the tensor) and write one tensor's record; return its report row.

        One dequantize in all: its result is both the new dense values and the report's input.
        """
        tensor = getattr(target.module, target.tensor_name)
        original = tensor.detach()  # keeps the original values: the assignment below swaps the storage
        record = self.finish_record(target, _with_dtype(record, original.dtype))
        dense = record.dequantize().to(device=original.device, dtype=original.dtype)
        row = layer_report(target.qualified_name, original, record, dense=dense)
        for owner, pname in owners.get(id(tensor), []):
            compressed.attach(owner, pname, record)
        with torch.no_grad():
            tensor.data = dense
        compressed.attach(target.module, target.tensor_name, record)
        return row

    def _job(self, item: ResolvedTensor, seed: Optional[int]) -> "_Job":
        weight = getattr(item.module, item.tensor_name).detach().cpu().float().numpy()
        sw = self.sample_weight(item)
        return _Job(item.qualified_name, weight, item.spec, None if sw is None else sw.detach().cpu().float().numpy(),
                    seed)

    # ------------------------------------------------------------------ finalize / report

    def finalize(self, backend: Union[str, ExportBackend] = ExportBackend.CoreAI, *, inplace: bool = False) -> nn.Module:
        """Export the prepared model with a registered backend (``"coreai"``, ``"torch"``, ...)."""
        if self.prepared_model is None:
            raise RuntimeError("finalize() needs a prepared model: call prepare() first")
        return export_finalize(self.prepared_model, backend, inplace=inplace, registry=self.registry)

    def report(self) -> PalettizationReport:
        """Per-layer table and model totals of the last ``prepare()``."""
        if self._report is None:
            raise RuntimeError("report() needs a prepared model: call prepare() first")
        return self._report


class _Job:
    """One tensor to cluster; numpy payloads so it pickles cheaply to worker processes."""

    def __init__(self, name: str, weight: np.ndarray, spec: Any, sample_weight: Optional[np.ndarray],
                 seed: Optional[int]):
        self.name, self.weight, self.spec, self.sample_weight, self.seed = name, weight, spec, sample_weight, seed


def _run_job(job: _Job, clusterer: Any) -> compressed.PalettizedTensor:
    sw = None if job.sample_weight is None else torch.from_numpy(job.sample_weight)
    return palettize_tensor(torch.from_numpy(job.weight), job.spec, clusterer, sample_weight=sw, seed=job.seed,
                            name=job.name)


def _with_dtype(record: compressed.PalettizedTensor, dtype: torch.dtype) -> compressed.PalettizedTensor:
    return record if record.dtype == dtype else attrs.evolve(record, dtype=dtype)


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """Every (module, parameter name) holding each parameter, keyed by the parameter's id (tied weights)."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((module, pname))
    return owners


def _make_report(rows: list, before_bits: int, model: nn.Module) -> PalettizationReport:
    after = model_size(model)
    before = TensorSize(after.compressed.numel, before_bits)
    return PalettizationReport(layers=rows, before=before, after=after.compressed, model_total=after.total,
                               model_mib_before=(after.uncompressed.total_bits + before_bits) / 8 / 2**20,
                               model_mib_after=after.mib)
