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
import copy
import multiprocessing
from typing import Any, ClassVar, Iterable, Optional, Union

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
from ..resolve import ResolvedTensor, resolve_state_specs
from ..sizes import TensorSize, dense_size, model_size
from .report import PalettizationReport, layer_report
from .tensor import check_palettizable, palettize_tensor


class Palettizer:
    """Post-training palettization of a model with a registered clusterer.

    :param model: the model to compress (not modified unless ``prepare(inplace=True)``).
    :param config: a ``KMeansPalettizerConfig``, a dict, a YAML path, or ``None``
        for the default (4-bit per-tensor for every supported layer).
    :param registry: the plugin registry to resolve the clusterer and backends in.
    """

    algorithm: ClassVar[str] = "kmeans"
    config_class: ClassVar[type] = KMeansPalettizerConfig

    def __init__(self, model: nn.Module, config: Any = None, *, registry: Optional[plugins.Registry] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = self.config_class() if config is None else load(config, self.config_class)
        if not isinstance(self.config, self.config_class):
            raise ConfigError(f"config: expected a {self.config_class.__name__}, got {type(self.config).__name__}")
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
        seen, targets = set(), []
        self.plan_notes: dict[str, str] = {}
        for item in resolve_state_specs(model, self.config):
            if item.spec is None:
                continue
            tensor = getattr(item.module, item.tensor_name)
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if not tensor.is_floating_point():
                raise CompressionError(f"{item.qualified_name}: cannot palettize a {tensor.dtype} tensor")
            if not bool(torch.isfinite(tensor).all()):
                raise CompressionError(f"{item.qualified_name}: has NaN or infinite values; cannot palettize it")
            spec, note = fit_spec(tuple(tensor.shape), item.spec, item.on_incompatible, item.qualified_name)
            if note:
                self.plan_notes[item.qualified_name] = note
            if spec is not None:
                targets.append(item if spec is item.spec else attrs.evolve(item, spec=spec))
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
        clusterer = self.clusterer() if clusterer is None else clusterer
        jobs = [_Job(t.qualified_name, getattr(t.module, t.tensor_name).detach().cpu().float().numpy(),
                     t.spec, self._sample_weight_np(t), seed) for t in targets]
        return self._run(jobs, clusterer, num_workers, executor, progress)

    # ------------------------------------------------------------------ prepare

    def prepare(self, example_inputs: Any = None, *, inplace: bool = False, num_workers: int = 1,
                executor: Optional[cf.Executor] = None, progress: Optional[bool] = None,
                seed: Optional[int] = None) -> nn.Module:
        """Return the model with palettized weights in effect (eager PyTorch).

        :param example_inputs: accepted for API symmetry with quantizers; data-free
            palettizers do not run the model.
        :param inplace: modify ``self.model`` instead of a deep copy.
        :param num_workers: > 1 clusters layers in that many spawned processes.
        :param executor: any ``concurrent.futures.Executor`` (overrides ``num_workers``).
        :param progress: show a progress bar (default: when stderr is a terminal).
        :param seed: seed for randomized clusterers (vector k-means); scalar
            k-means is deterministic.
        """
        model = self.model if inplace else copy.deepcopy(self.model)
        targets = self.plan(model)
        results = self.cluster_targets(targets, num_workers=num_workers, executor=executor, progress=progress,
                                       seed=seed)
        rows, before_bits = [], 0
        for target, record in zip(targets, results):
            original = getattr(target.module, target.tensor_name).detach().clone()
            record = self.finish_record(target, _with_dtype(record, original.dtype))
            for owner_name, owner, pname in _owners(model, getattr(target.module, target.tensor_name)):
                compressed.attach(owner, pname, record)
            compressed.apply(target.module, target.tensor_name, record)
            rows.append(layer_report(target.qualified_name, original, record))
            before_bits += dense_size(original.shape, original.dtype).total_bits
        self._report = _make_report(rows, before_bits, model)
        self._report.coverage = check_coverage(model, self.config, self.plan_notes)
        self.prepared_model = model
        return model

    def _sample_weight_np(self, item: ResolvedTensor) -> Optional[np.ndarray]:
        sw = self.sample_weight(item)
        return None if sw is None else sw.detach().cpu().float().numpy()

    def _run(self, jobs: list["_Job"], clusterer: Any, num_workers: int, executor: Optional[cf.Executor],
             progress: Optional[bool]) -> list[compressed.PalettizedTensor]:
        own = None
        if executor is None and num_workers > 1 and len(jobs) > 1:
            own = executor = cf.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            bar = progress_bar(total=len(jobs), desc=f"palettize ({self.algorithm})", unit="layer", enabled=progress)
            with bar:
                if executor is None:
                    results = []
                    for job in jobs:
                        bar.set_postfix_str(job.name, refresh=False)
                        results.append(_run_job(job, clusterer))
                        bar.update()
                    return results
                futures = [executor.submit(_run_job, job, clusterer) for job in jobs]
                for _ in cf.as_completed(futures):
                    bar.update()
                return [f.result() for f in futures]
        finally:
            if own is not None:
                own.shutdown()

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


def _owners(model: nn.Module, tensor: torch.Tensor) -> Iterable[tuple[str, nn.Module, str]]:
    for name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            if p is tensor:
                yield name, module, pname


def _make_report(rows: list, before_bits: int, model: nn.Module) -> PalettizationReport:
    after = model_size(model)
    before = TensorSize(after.compressed.numel, before_bits)
    return PalettizationReport(layers=rows, before=before, after=after.compressed, model_total=after.total,
                               model_mib_before=(after.uncompressed.total_bits + before_bits) / 8 / 2**20,
                               model_mib_after=after.mib)
