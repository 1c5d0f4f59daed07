"""Stage 1 of mixed precision: the sensitivity table.

For every layer and every candidate, compress that layer alone and score the model's
output against the uncompressed output (seed 000). The work is organised so that
nothing is done twice:

1. inputs are checked up front (metric, palettizers, candidates, layers, data,
   engine): a bad argument fails before any model work, naming the field;
2. the reference (uncompressed) outputs are computed once;
3. each (layer, candidate) is clustered once, by the candidate's palettizer
   (``cluster_targets``, parallel on the executor), and its record is kept: on the
   returned table (``table.records``, reused by :func:`apply_recipe`) and in the
   on-disk cache;
4. each pair is scored by an engine (:mod:`bitsmith.mixed_precision.engine`),
   in-process or on any ``concurrent.futures.Executor``; every score is appended to
   the cache as soon as it exists, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import math
import multiprocessing
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import attrs
import torch
from torch import nn

from .. import compressed, plugins
from ..protocols import DataDrivenPalettizer, instantiate
from ..config import KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, PalettizationSpec, to_dict
from ..devices import resolve_device, same_device
from ..errors import CompressionError, ConfigError
from ..palettization import Palettizer
from ..palettization.tensor import check_palettizable
from ..progress import progress_bar
from ..resolve import ResolvedTensor, check_materialized
from ..sizes import dense_size, model_size, record_size
from .cache import SensitivityCache, default_cache_dir, digest
from .candidates import Candidate, CandidateLike, resolve_candidates
from .engine import ENGINES, EvalTask, EvalUnit, UnitResult, check_blocks, eval_mode, run_unit, trace, warn_fallback
from .executors import SharedScoring, score_on, unit_threads
from .inputs import Batch, LayerInfo, default_output_fn, find_layers, hash_data, hash_weights, normalize_data, \
    run_batches, to_device, weights_device
from .table import SCHEMA_VERSION, SensitivityRow, SensitivityTable

__all__ = ["compute_sensitivity"]

_DEFAULT = object()


def compute_sensitivity(model: nn.Module, data: Any, candidates: Optional[Iterable[CandidateLike]] = None,
                        metric: str = "psnr", palettizer: str = "kmeans", *,
                        layers: Union[None, str, Sequence[str]] = None,
                        output_fn: Optional[Callable[[Any], torch.Tensor]] = None,
                        cache_dir: Any = _DEFAULT, executor: Optional[cf.Executor] = None, num_workers: int = 1,
                        progress: Optional[bool] = None, engine: str = "auto",
                        palettizers: Optional[Mapping[str, Any]] = None, calibration_data: Any = None,
                        registry: Optional[plugins.Registry] = None,
                        device: Union[None, str, torch.device] = None) -> SensitivityTable:
    """Score every (layer, candidate) pair of ``model`` on ``data``; returns a :class:`SensitivityTable`.

    :param model: the uncompressed model (it is run in eval mode and left unchanged).
    :param data: one batch (tensor, tuple of positional inputs, dict of keyword
        inputs) or a list of batches; see :mod:`bitsmith.mixed_precision.inputs`.
    :param candidates: :class:`Candidate` objects, specs, bit widths or labels such
        as ``"4-bit g16"``; default 2/4/6-bit per-tensor. A candidate that cannot
        apply to a layer (group size not dividing its channels) is skipped there.
    :param metric: registered sensitivity metric (``"psnr"``, ``"kl"``, ``"sqnr"``, ``"mse"``).
    :param palettizer: registered palettizer clustering candidates that name none.
    :param layers: names or full-match regexes restricting the scored layers.
    :param output_fn: picks the scored tensor from the model output (default: the
        output tensor, the first tuple element, or ``logits``).
    :param cache_dir: cache root (default ``$BITSMITH_CACHE_DIR`` or
        ``./.bitsmith-cache``); ``None`` disables the on-disk cache.
    :param executor: any ``concurrent.futures.Executor`` (e.g. a Dask
        ``Client.get_executor()``) for clustering and scoring.
    :param num_workers: > 1 (without ``executor``) clusters and scores on that many spawned processes.
    :param progress: show progress bars (default: when stderr is a terminal).
    :param engine: ``"fast"`` (torch.fx: re-run only the graph after the changed
        layer), ``"block"`` (no fx: replay the module calls before the changed
        layer from a cache), ``"naive"`` (full forward per pair), ``"auto"`` (fast,
        else block, else naive) or ``"local"`` (each layer scored on its own output
        from cached inputs: approximate, for models too large to re-run per pair).
        Falling back to naive warns with an :class:`EngineFallbackWarning`.
    :param palettizers: ready palettizer instances by name (e.g. a calibrated
        ``SKMPalettizer``) used instead of building them.
    :param calibration_data: batches for palettizers that need calibration (a
        ``compute_sensitivity(data)`` method, like ``SKMPalettizer`` and ``GPTQPalettizer``);
        default ``data``. Part of the cache key when given.
    :param registry: plugin registry (default: the process-wide one).
    :param device: where the model is run for scoring (``"cuda"``, ``"cpu"``, ...);
        default: the device of the model's weights. A model elsewhere is copied there
        for this call (``model`` itself is not moved); batches are moved there. Scores
        from a device other than the CPU key their own cache entries.
    """
    started = time.perf_counter()
    registry = registry or plugins.default_registry()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if engine not in ENGINES:
        raise ConfigError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"num_workers: expected a positive integer, got {num_workers!r}")
    metric_name, metric_impl = _resolve_metric(metric, registry)
    cands = [c.bound(palettizer) for c in resolve_candidates(candidates)]
    instances = dict(palettizers or {})
    classes = {name: registry.get("palettizer", name) for name in dict.fromkeys(_palettizer(c) for c in cands)
               if name not in instances}
    check_materialized(model.named_parameters(), "score sensitivity")
    infos = find_layers(model, layers)
    if not infos:
        raise CompressionError(f"{type(model).__name__} has no palettizable layer to score")
    applicable = _applicability(infos, cands)
    scorer, device_key = _placed(model, device)
    batches = [to_device(b, device_key) for b in normalize_data(data)] if device_key is not None \
        else normalize_data(data)
    output_fn = output_fn or default_output_fn

    # separate calibration data is read once (a generator is not consumed twice) and keys the cache:
    # the records of calibrated palettizers depend on it
    calibration = None if calibration_data is None else normalize_data(calibration_data)
    run_key = digest(SCHEMA_VERSION, hash_weights(model), hash_data(batches), metric_name,
                     _version(registry, "sensitivity_metric", metric_name), repr(metric_impl),
                     getattr(output_fn, "__module__", ""), getattr(output_fn, "__qualname__", repr(output_fn)),
                     *([] if calibration is None else ["calibration", hash_data(calibration)]),
                     *([] if device_key is None or device_key.type == "cpu" else ["device", device_key.type]))
    root = default_cache_dir() if cache_dir is _DEFAULT else cache_dir
    cache = SensitivityCache(root, run_key, {"schema_version": SCHEMA_VERSION, "model": type(model).__qualname__,
                                             "metric": metric_name, "batches": len(batches)})
    tokens = {name: ":" + _instance_token(inst) for name, inst in instances.items()}  # once per instance
    pair_keys = {_label(c): c.key() + ":" + str(_version(registry, "palettizer", _palettizer(c)))
                 + tokens.get(_palettizer(c), "") for c in cands}

    own_pool = None
    if executor is None and num_workers > 1:  # one pool for clustering and scoring
        own_pool = executor = cf.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        with eval_mode(scorer):
            t0 = time.perf_counter()
            reference = run_batches(scorer, batches, output_fn)
            baseline_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            records = _cluster(model, infos, cands, applicable, cache, pair_keys, classes, instances, registry,
                               _raw(batches if calibration is None else calibration), executor,
                               progress)
            cluster_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            todo = [(li, ci) for li, info in enumerate(infos) for ci in applicable[li]
                    if cache.row(info.name, cache.pair_key(info.name, pair_keys[_label(cands[ci])])) is None]
            engine_used, notes = _score(scorer, infos, cands, todo, records, batches, reference, metric_impl,
                                        output_fn, engine, cache, pair_keys, executor, progress)
            score_s = time.perf_counter() - t0
    finally:
        if own_pool is not None:
            own_pool.shutdown()

    rows = []
    for li, info in enumerate(infos):
        for ci in applicable[li]:
            cand = cands[ci]
            row = cache.row(info.name, cache.pair_key(info.name, pair_keys[_label(cand)]))
            assert row is not None, "every applicable pair was scored into the cache above"
            score = float(row["score"])
            size = record_size(records[(li, ci)])
            rows.append(SensitivityRow(layer=info.name, candidate=_label(cand), spec=cand.spec,
                                       palettizer=_palettizer(cand), numel=info.numel, bits=size.total_bits,
                                       index_bits=size.payload_bits, score=score,
                                       distortion=_distortion(metric_impl, score)))
    layer_bits = sum(dense_size(i.shape, i.torch_dtype).total_bits for i in infos)
    meta = {"engine": engine_used, "engine_requested": engine, "engine_notes": notes, "samples": int(reference.shape[0]),
            "batches": len(batches), "model": type(model).__qualname__, "pairs": len(rows), "pairs_scored": len(todo),
            "seconds": {"baseline": baseline_s, "cluster": cluster_s, "score": score_s,
                        "total": time.perf_counter() - started},
            "cache": str(cache.path) if cache.path else None, "run_key": run_key,
            "candidates": [c.to_dict() for c in cands]}
    return SensitivityTable(rows=rows, layers=infos, metric=metric_name,
                            higher_is_better=bool(metric_impl.higher_is_better), unit=str(metric_impl.unit),
                            uncompressed_bits=model_size(model).total.total_bits - layer_bits, meta=meta,
                            records={(infos[li].name, _label(cands[ci])): rec for (li, ci), rec in records.items()})


# ---------------------------------------------------------------------- checks


def _placed(model: nn.Module, device: Union[None, str, torch.device]) -> tuple[nn.Module, Optional[torch.device]]:
    """The model that scores (``model``, or a copy on ``device``) and its device (``None``: spread over several).

    ``device`` is checked by :func:`bitsmith.devices.resolve_device` (the same errors as DKM and SKM).
    """
    home = weights_device(model)
    target = resolve_device(device)
    if target is None:
        return model, home
    if same_device(home, target):
        return model, home
    return copy.deepcopy(model).to(target), target


def _resolve_metric(metric: Any, registry: plugins.Registry) -> tuple[str, Any]:
    if isinstance(metric, str):
        return metric, registry.get("sensitivity_metric", metric)
    for attr in ("score", "to_distortion", "higher_is_better", "unit"):
        if not hasattr(metric, attr):
            raise TypeError(f"metric: expected a registered metric name or a SensitivityMetric, got {metric!r} "
                            f"(no {attr!r})")
    return str(getattr(metric, "name", type(metric).__name__)), metric


def _version(registry: plugins.Registry, kind: str, name: str) -> Optional[str]:
    try:
        return registry.provider(kind, name).version
    except Exception:  # noqa: BLE001 - instances passed by the caller have no provider
        return None


def _label(cand: Candidate) -> str:
    """A candidate's label (never ``None``: :class:`Candidate` defaults it to its spec's label)."""
    assert cand.label is not None, "Candidate.__attrs_post_init__ sets the label"
    return cand.label


def _palettizer(cand: Candidate) -> str:
    """The palettizer of a bound candidate (:meth:`Candidate.bound` fills in the default one)."""
    assert cand.palettizer is not None, "candidates are bound to the default palettizer up front"
    return cand.palettizer


def _instance_token(inst: Any) -> str:
    """What sets a ready palettizer instance's results apart, for the cache key.

    Its class, its public scalar attributes (options such as GPTQ's ``damp`` or
    ``weighted_luts``), its config and the fingerprint of a sensitivity it was
    calibrated with beforehand. Anything else it holds is not covered: such options
    must show in one of these or use their own cache directory.
    """
    options = {k: v for k, v in sorted(getattr(inst, "__dict__", {}).items())
               if not k.startswith("_") and (v is None or isinstance(v, (bool, int, float, str)))}
    config = getattr(inst, "config", None)
    fingerprint = getattr(getattr(inst, "sensitivity", None), "fingerprint", None)
    return digest(type(inst).__module__, type(inst).__qualname__, options,
                  to_dict(config) if attrs.has(type(config)) else repr(config),
                  fingerprint if isinstance(fingerprint, str) else None)[:16]


def _applicability(infos: Sequence[LayerInfo], cands: Sequence[Candidate]) -> list[list[int]]:
    applicable = []
    for info in infos:
        ok, reasons = [], []
        for ci, cand in enumerate(cands):
            try:
                check_palettizable(info.shape, cand.spec, info.qualified_name)
                ok.append(ci)
            except CompressionError as exc:
                reasons.append(f"{cand.label}: {exc}")
        if not ok:
            raise CompressionError(f"layer {info.name!r} {info.shape}: no candidate applies\n  " + "\n  ".join(reasons))
        applicable.append(ok)
    return applicable


def _distortion(metric: Any, score: float) -> float:
    if math.isnan(score):
        return math.inf
    return float(metric.to_distortion(score))


def _raw(batches: Sequence[Batch]) -> list[Any]:
    return [kwargs if kwargs else (args[0] if len(args) == 1 else args) for args, kwargs in batches]


# ---------------------------------------------------------------------- clustering


def _cluster(model: nn.Module, infos: Sequence[LayerInfo], cands: Sequence[Candidate],
             applicable: Sequence[Sequence[int]], cache: SensitivityCache, pair_keys: Mapping[str, str],
             classes: Mapping[str, Any], instances: dict[str, Any], registry: plugins.Registry,
             calibration: Any, executor: Optional[cf.Executor], progress: Optional[bool]) -> dict[tuple[int, int], compressed.PalettizedTensor]:
    """Every (layer index, candidate index) record: from the cache, else clustered (and cached)."""
    records: dict[tuple[int, int], compressed.PalettizedTensor] = {}
    missing: dict[int, list[int]] = {}
    for li, info in enumerate(infos):
        for ci in applicable[li]:
            rec = cache.load_record(cache.pair_key(info.name, pair_keys[_label(cands[ci])]))
            if rec is not None:
                records[(li, ci)] = rec
            else:
                missing.setdefault(ci, []).append(li)
    for ci, layer_ids in missing.items():
        cand = cands[ci]
        name = _palettizer(cand)
        inst = instances.get(name)
        if inst is None:
            inst = _make_palettizer(classes[name], model, infos, registry)
            instances[name] = inst
        if isinstance(inst, Palettizer):
            _calibrate(inst, calibration)
            targets = _targets(inst, model, [infos[li] for li in layer_ids], cand.spec)
            recs = inst.cluster_targets(targets, executor=executor, progress=progress)
            recs = [inst.finish_record(t, _with_dtype(r, getattr(t.module, t.tensor_name).dtype))
                    for t, r in zip(targets, recs)]
        else:
            recs = _cluster_by_prepare(classes.get(name, type(inst)), model, [infos[li] for li in layer_ids],
                                       cand.spec, calibration)
        for li, rec in zip(layer_ids, recs):
            records[(li, ci)] = rec
            cache.save_record(cache.pair_key(infos[li].name, pair_keys[_label(cand)]), rec)
    return records


def _layer_config(infos: Sequence[LayerInfo], spec: PalettizationSpec) -> KMeansPalettizerConfig:
    return KMeansPalettizerConfig(global_config=None, module_name_configs={
        info.name: ModuleKMeansPalettizerConfig(op_state_spec={info.tensor: spec}) for info in infos})


def _make_palettizer(cls: Any, model: nn.Module, infos: Sequence[LayerInfo], registry: plugins.Registry) -> Any:
    return instantiate(cls, model, _layer_config(infos, PalettizationSpec(n_bits=4)), registry)


def _calibrate(inst: Any, calibration: Any) -> None:
    """Calibrate a palettizer that needs data (``compute_sensitivity(data)`` and no ``sensitivity`` yet)."""
    if isinstance(inst, DataDrivenPalettizer) and inst.sensitivity is None:
        inst.compute_sensitivity(calibration)


def _targets(inst: Palettizer, model: nn.Module, infos: Sequence[LayerInfo], spec: PalettizationSpec
             ) -> list[ResolvedTensor]:
    wanted = {info.name: info for info in infos}
    planned = {t.module_name: t for t in inst.plan(model) if t.module_name in wanted}
    out = []
    for info in infos:
        item = planned.get(info.name)
        if item is None:
            item = ResolvedTensor(info.name, model.get_submodule(info.name), info.tensor, spec, "mixed_precision")
        out.append(attrs.evolve(item, spec=spec))
    return out


def _with_dtype(record: compressed.PalettizedTensor, dtype: torch.dtype) -> compressed.PalettizedTensor:
    return record if record.dtype == dtype else attrs.evolve(record, dtype=dtype)


def _cluster_by_prepare(cls: Any, model: nn.Module, infos: Sequence[LayerInfo], spec: PalettizationSpec,
                        calibration: Any) -> list[compressed.PalettizedTensor]:
    """Any palettizer honouring the protocol: prepare a copy with these layers and read back their records."""
    prepared = cls(model, _layer_config(infos, spec)).prepare(example_inputs=calibration)
    out = []
    for info in infos:
        rec = compressed.records(prepared.get_submodule(info.name)).get(info.tensor)
        if not isinstance(rec, compressed.PalettizedTensor):
            raise CompressionError(f"{info.qualified_name}: palettizer {cls.__name__} attached no palettized record")
        out.append(rec)
    return out


# ---------------------------------------------------------------------- scoring


def _score(model: nn.Module, infos: Sequence[LayerInfo], cands: Sequence[Candidate], todo: list[tuple[int, int]],
           records: Mapping[tuple[int, int], compressed.PalettizedTensor], batches: list[Batch],
           reference: torch.Tensor, metric: Any, output_fn: Callable, engine: str, cache: SensitivityCache,
           pair_keys: Mapping[str, str], executor: Optional[cf.Executor],
           progress: Optional[bool]) -> tuple[str, list[str]]:
    """Score the ``todo`` pairs, writing each score to the cache; returns (engine used, fallback notes)."""
    if not todo:
        return "cached", []
    by_layer: "OrderedDict[int, list[int]]" = OrderedDict()
    for li, ci in todo:
        by_layer.setdefault(li, []).append(ci)
    tasks = [EvalTask(li, infos[li].name, infos[li].tensor, [(ci, records[(li, ci)]) for ci in cis])
             for li, cis in by_layer.items()]
    engine, program, notes, quiet = _choose_engine(engine, model, batches, reference, output_fn, tasks)
    bar = progress_bar(total=len(todo), desc=f"sensitivity ({engine})", unit="pair", enabled=progress)

    def emit(li: int, ci: int, score: float, seconds: float) -> None:
        info = infos[li]
        cache.add_row(info.name, cache.pair_key(info.name, pair_keys[_label(cands[ci])]), score=score,
                      seconds=seconds, candidate=_label(cands[ci]))
        bar.update()

    results: list[UnitResult] = []
    with bar:
        if executor is None:
            results.append(run_unit(EvalUnit(model=model, batches=batches, reference=reference, metric=metric,
                                             output_fn=output_fn, engine=engine, tasks=tasks, program=program),
                                    emit))
        else:
            shared = SharedScoring(model=model, batches=batches, reference=reference, metric=metric,
                                   output_fn=output_fn, engine=engine,
                                   program=None if engine == "block" else program,  # workers record their own
                                   tensors=[(t.name, t.tensor) for t in tasks], threads=unit_threads(executor))
            results += score_on(executor, shared, tasks, emit)
            diff = max(r.reference_diff for r in results)
            if diff:
                note = (f"the workers' reference output differs from this process's by up to {diff:.3g} (another "
                        "torch thread count or CPU): each worker scores against its own, so scores can differ from "
                        "a sequential run's in the last digits")
                notes.append(note)
                quiet.add(note)
    notes = list(dict.fromkeys(notes + [r.note for r in results if r.note]))
    for note in notes:
        if note not in quiet:
            warn_fallback(note)
    used = sorted({r.engine for r in results})
    return (used[0] if len(used) == 1 else "+".join(used)), notes


def _choose_engine(requested: str, model: nn.Module, batches: list[Batch], reference: torch.Tensor,
                   output_fn: Callable, tasks: Sequence[EvalTask]) -> tuple[str, Any, list[str], set[str]]:
    """The engine to run, its program (fx steps, or the checked block replay), notes, and the notes that need no warning.

    ``auto``: fast (fx) if it traces, else block, else naive; ``fast`` and ``block``
    fall back to naive. Only a fall back to naive warns (an exact engine was replaced
    by a slow one); ``auto`` choosing block is recorded in the notes only.
    """
    notes: list[str] = []
    quiet: set[str] = set()
    if requested in ("naive", "local"):
        return requested, None, notes, quiet
    if requested in ("auto", "fast"):  # trace once, here: tracing is not thread-safe
        program, note = trace(model, batches, reference, output_fn)
        if program is not None:
            return "fast", program, notes, quiet
        assert note is not None, "trace() gives the reason when it returns no program"
        notes.append(note)
        if requested == "fast":
            return "naive", None, notes, quiet
        quiet.add(note)
    replay, note = check_blocks(model, batches, reference, output_fn, [(t.name, t.tensor) for t in tasks])
    if replay is not None:
        return "block", replay, notes, quiet
    assert note is not None, "check_blocks() gives the reason when it returns no replay"
    notes.append(note)
    return "naive", None, notes, quiet
