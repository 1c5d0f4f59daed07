"""Run a pipeline: build or take the model, load data, run each step, write artifacts and the report.

Each step type runs through :data:`RUNNERS` (step class -> function), the runner-side
half of :data:`bitsmith.pipeline.config.STEP_TYPES`. Every file lands atomically
(:mod:`bitsmith.atomic`); existing files are refused before any work unless
``overwrite=True``. Diagnostics go to ``logging.getLogger("bitsmith.pipeline")``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from attrs import define, field
from torch import nn

from .. import atomic, compressed, plugins
from ..protocols import instantiate
from ..config import from_dict
from ..errors import ConfigError, PluginError
from ..export import finalize as export_finalize
from ..loading import import_callable
from ..sizes import model_size
from .config import (
    STEP_TYPES,
    ExportStep,
    MixedPrecisionStep,
    PalettizeStep,
    PipelineConfig,
    QuantizeStep,
    config_class,
    export_path,
    load_pipeline,
    output_files,
    palettizer_class,
    recipe_file,
    step_type,
)
from .imports import extra_sys_path
from .report import ArtifactReport, PipelineReport, StepReport

Echo = Callable[[str], None]

logger = logging.getLogger("bitsmith.pipeline")


@define
class PipelineResult:
    """What :func:`compress` returns.

    ``model``: the compressed model after the last compression step (eager PyTorch,
    records attached); ``exported``: step index -> the model each export step's
    backend finalized; ``artifacts``: the files written (exports, recipes, report).
    """

    model: nn.Module
    report: PipelineReport
    config: PipelineConfig
    artifacts: list[Path] = field(factory=list)
    exported: dict[int, nn.Module] = field(factory=dict)


def _quiet(_: str) -> None:
    return None


def compress(model: Union[nn.Module, Callable[[], nn.Module], str, None],
             config: Union[PipelineConfig, dict, str, os.PathLike], *, data: Any = None,
             output_dir: Union[str, os.PathLike, None] = None, registry: Optional[plugins.Registry] = None,
             progress: Optional[bool] = None, echo: Optional[Echo] = None, overwrite: bool = False,
             strict: bool = False) -> PipelineResult:
    """Compress ``model`` as the pipeline ``config`` says; returns a :class:`PipelineResult`.

    :param model: the uncompressed model (left unchanged), a factory callable, a
        ``'package.module:function'`` string, or ``None`` to use ``config.model``.
    :param config: a :class:`PipelineConfig`, a dict, YAML text or a YAML/JSON path;
        validated against the registry before any model work.
    :param data: calibration data (a batch, or a list of batches: tensors, tuples of
        positional inputs, or dicts of keyword inputs); default: ``config.data``.
    :param output_dir: where artifacts and ``report.json``/``report.txt`` go
        (default ``config.output_dir``, else ``artifacts/<pipeline file stem>``).
    :param registry: plugin registry (default: the process-wide one).
    :param progress: progress bars of the steps (default: when stderr is a terminal).
    :param echo: receives one progress line per step (``print`` for the CLI); silent by default.
    :param overwrite: replace files left in ``output_dir`` by an earlier run; without
        it an existing file is refused before any model work.
    :param strict: config keys (module names, regexes, types) that match no module
        of the model are errors instead of warnings.
    """
    registry = registry or plugins.default_registry()
    stem = Path(config).stem if isinstance(config, (str, os.PathLike)) and str(config).endswith(
        (".yaml", ".yml", ".json")) else "pipeline"
    config = load_pipeline(config, registry=registry, check=False)
    with extra_sys_path(config.python_path):
        _validate_with_inputs(config, registry, has_data=data is not None)
        out_dir = Path(output_dir if output_dir is not None else config.output_dir or f"artifacts/{stem}")
        _check_outputs(config, registry, out_dir, overwrite)
        return _run(model, config, data, out_dir, registry, progress, echo or _quiet, overwrite, strict)


def _check_outputs(config: PipelineConfig, registry: plugins.Registry, out_dir: Path, overwrite: bool) -> None:
    """Refuse, before any work, outputs that exist (without ``overwrite``) or leave ``out_dir`` through a link."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output_dir: {out_dir} exists and is not a folder")
    owners, _ = output_files(config, registry)
    root = out_dir.resolve()
    errors = []
    for rel, owner in owners.items():
        target = out_dir / rel
        if not target.resolve().is_relative_to(root):
            errors.append(f"{owner}: {target} leads outside the output folder {out_dir} (a symbolic link)")
        elif not overwrite and (target.exists() or target.is_symlink()):
            errors.append(f"{owner}: {target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if errors:
        raise ConfigError(errors)


def _preflight(config: PipelineConfig, model: nn.Module, registry: plugins.Registry, strict: bool) -> None:
    """Checks that need the model, before any data is loaded or any step runs; one ConfigError lists all.

    Mixed-precision targets below the smallest recipe are errors. Config keys
    (``module_name_configs``/``module_type_configs``) that match no module are
    errors with ``strict``, else warnings on the ``bitsmith.pipeline`` logger.
    """
    from ..mixed_precision.targets import check_target

    errors, unmatched = [], []
    for index, step in enumerate(config.steps):
        if isinstance(step, MixedPrecisionStep):
            try:
                check_target(model, step.candidates, target_bpw=step.target_bpw, target_size=step.target_size,
                             layers=step.layers, where=f"steps.{index}.")
            except ConfigError as exc:
                errors += exc.lines
        elif isinstance(step, (PalettizeStep, QuantizeStep)) and step.config is not None:
            unmatched += [f"steps.{index}.config.{key}: matches no module of {type(model).__name__}"
                          for key in _unmatched_keys(step, model, registry)]
    if strict:
        errors += unmatched
    for line in [] if strict else unmatched:
        logger.warning("%s (nothing is compressed by it; --strict makes this an error)", line)
    if errors:
        raise ConfigError(errors)


def _unmatched_keys(step: Union[PalettizeStep, QuantizeStep], model: nn.Module, registry: plugins.Registry) -> list:
    """The ``module_name_configs[...]``/``module_type_configs[...]`` keys of the step's config that match nothing."""
    import warnings

    from ..config import KMeansPalettizerConfig, QuantizerConfig
    from ..resolve import warn_unmatched_keys

    if isinstance(step, PalettizeStep):
        cls = config_class(palettizer_class(step.algorithm, registry), KMeansPalettizerConfig)
    else:
        cls = config_class(registry.get("quantizer", step.quantizer), QuantizerConfig)
    body: Any = from_dict(step.config, cls)
    if not (hasattr(body, "module_name_configs") and hasattr(body, "module_type_configs")):
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported here, with the step's path, instead
        return warn_unmatched_keys(model, body)


@define
class _State:
    """What the steps of one run share: the current model and compressor, data, output folder, options."""

    model: nn.Module
    raw: list[Any]
    batches: list[tuple[tuple, dict]]
    example: Any
    out_dir: Path
    registry: plugins.Registry
    progress: Optional[bool]
    overwrite: bool
    fp32: Any
    result: PipelineResult
    compressor: Any = None


def _run(model: Any, config: PipelineConfig, data: Any, out_dir: Path, registry: plugins.Registry,
         progress: Optional[bool], echo: Echo, overwrite: bool, strict: bool) -> PipelineResult:
    started = time.perf_counter()
    model = _build_model(model, config)
    _preflight(config, model, registry, strict)
    raw, batches = _load_data(data, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = batches[0] if batches else None
    model = copy.deepcopy(model).eval()
    fp32 = model_size(model)
    reference = _output(model, example)
    report = PipelineReport(name=config.name or out_dir.name, fp32_mib=fp32.mib)
    result = PipelineResult(model=model, report=report, config=config)
    state = _State(model=model, raw=raw, batches=batches, example=example, out_dir=out_dir, registry=registry, progress=progress,
                   overwrite=overwrite, fp32=fp32, result=result)
    total = len(config.steps)
    for index, step in enumerate(config.steps):
        kind, label = step_type(step), step.label()
        echo(f"[{index + 1}/{total}] {kind} {label} ...")
        logger.info("step %d/%d: %s %s", index + 1, total, kind, label)
        t0 = time.perf_counter()
        detail = RUNNERS[type(step)](step, index, state)
        seconds = time.perf_counter() - t0
        row = _step_report(index, kind, label, seconds, state.model, reference, example, detail)
        report.steps.append(row)
        sqnr = "" if row.output_sqnr_db is None else f", output SQNR {row.output_sqnr_db:.1f} dB"
        echo(f"[{index + 1}/{total}] {kind} {label}: {seconds:.1f} s, {row.model_mib:.3f} MiB, "
             f"BPW {row.bpw:.2f}{sqnr}{', ' + detail if detail else ''}")
    result.model = state.model
    report.seconds = time.perf_counter() - started
    result.artifacts += list(report.write(out_dir, overwrite=overwrite))
    return result


def run_pipeline(source: Union[PipelineConfig, dict, str, os.PathLike], *, output_dir: Union[str, os.PathLike, None] = None,
                 registry: Optional[plugins.Registry] = None, progress: Optional[bool] = None,
                 echo: Optional[Echo] = None, overwrite: bool = False, strict: bool = False) -> PipelineResult:
    """Run a pipeline whose ``model`` (and ``data``) come from the config itself."""
    return compress(None, source, output_dir=output_dir, registry=registry, progress=progress, echo=echo,
                    overwrite=overwrite, strict=strict)


# --------------------------------------------------------------------------- inputs


def _validate_with_inputs(config: PipelineConfig, registry: plugins.Registry, *, has_data: bool) -> None:
    from .config import validate

    if not has_data:
        validate(config, registry=registry)
        return
    try:
        validate(config, registry=registry)
    except ConfigError as exc:
        lines = [line for line in exc.lines if not line.startswith("data: required by")]
        if lines:
            raise ConfigError(lines) from None


def _build_model(model: Any, config: PipelineConfig) -> nn.Module:
    if model is None:
        if config.model is None:
            raise ConfigError("model: no model given: pass one to compress() or set 'model: package.module:function'")
        model = config.model
    kwargs: dict[str, Any] = {}
    if isinstance(model, str):  # a reference: called with the config's model_kwargs
        model, kwargs = import_callable(model, field="model"), config.model_kwargs
    if isinstance(model, nn.Module):
        return model
    if callable(model):
        built = model(**kwargs)
        if not isinstance(built, nn.Module):
            raise TypeError(f"model: the factory returned {type(built).__name__}, expected a torch.nn.Module")
        return built
    raise TypeError(f"model: expected an nn.Module, a factory or 'package.module:function', got {type(model).__name__}")


def _load_data(data: Any, config: PipelineConfig) -> tuple[list[Any], list[tuple[tuple, dict]]]:
    """(raw batches as given, normalized ``(args, kwargs)`` batches); both empty without data."""
    from ..mixed_precision.inputs import normalize_data

    if data is None and config.data is not None:
        data = import_callable(config.data, field="data")(**config.data_kwargs)
    if data is None:
        return [], []
    batches = normalize_data(data)
    raw = [data] if isinstance(data, (torch.Tensor, tuple, dict)) else list(data)
    return raw, batches


def _call(model: nn.Module, batch: tuple[tuple, dict]) -> Any:
    args, kwargs = batch
    return model(*args, **kwargs)


def _output(model: nn.Module, batch: Optional[tuple[tuple, dict]]) -> Optional[torch.Tensor]:
    if batch is None:
        return None
    from ..mixed_precision.inputs import default_output_fn

    with torch.no_grad():
        return default_output_fn(_call(model, batch)).detach().float().clone()


def _example_inputs(batch: Optional[tuple[tuple, dict]]) -> Any:
    if batch is None:
        return None
    args, kwargs = batch
    if kwargs and not args:
        return kwargs
    return args


# --------------------------------------------------------------------------- steps


def _accepts(fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _instantiate(cls: Any, model: nn.Module, config: Any, registry: plugins.Registry) -> Any:
    return instantiate(cls, model, config, registry)


def _palettize(step: PalettizeStep, index: int, state: _State) -> str:
    from ..config import KMeansPalettizerConfig

    cls = palettizer_class(step.algorithm, state.registry)
    config = None if step.config is None else from_dict(step.config, config_class(cls, KMeansPalettizerConfig))
    named: set = set() if config is None else config.algorithms() - {None, step.algorithm}
    if named:  # scopes name other algorithms: each runs on its layers (bitsmith.palettization.palettize)
        from ..palettization import palettize

        state.model = palettize(state.model, config, state.raw or None, default_algorithm=step.algorithm,
                                registry=state.registry, progress=state.progress)
        state.compressor = None
        return f"also {', '.join(sorted(named))} (named per layer)"
    palettizer = _instantiate(cls, state.model, config, state.registry)
    kwargs = _accepts(palettizer.prepare, progress=state.progress, num_workers=step.num_workers, seed=step.seed)
    state.model = palettizer.prepare(state.raw or None, **kwargs)
    state.compressor = palettizer
    if not compressed.is_compressed(state.model):
        return "trainable (no records until export; the pipeline does not train)"
    return ""


def _quantize(step: QuantizeStep, index: int, state: _State) -> str:
    from ..config import QuantizerConfig

    batches = state.batches
    cls = state.registry.get("quantizer", step.quantizer)
    config = None if step.config is None else from_dict(step.config, config_class(cls, QuantizerConfig))
    quantizer = _instantiate(cls, state.model, config, state.registry)
    prepared = quantizer.prepare(_example_inputs(batches[0]))
    use = batches if step.calibration_batches is None else batches[:step.calibration_batches]
    with quantizer.calibration_mode(), torch.no_grad():
        for batch in use:
            _call(prepared, batch)
    state.model, state.compressor = prepared, quantizer
    return f"{_n_activations(prepared, quantizer)} activations"


def _n_activations(model: nn.Module, quantizer: Any) -> int:
    sites = getattr(quantizer, "activation_sites", None)
    if callable(sites):
        sites = sites()
    if isinstance(sites, (list, tuple)):
        return len(sites)
    return sum(1 for *_, r in compressed.iter_records(model) if isinstance(r, compressed.ActivationQuant))


def _mixed_precision(step: MixedPrecisionStep, index: int, state: _State) -> str:
    from ..mixed_precision import apply_recipe, compute_sensitivity, generate_recipe

    registry, progress, raw = state.registry, state.progress, state.raw
    table = compute_sensitivity(state.model, raw, step.candidates, metric=step.metric, palettizer=step.palettizer,
                                layers=step.layers, cache_dir=step.cache_dir, num_workers=step.num_workers,
                                progress=progress, engine=step.engine, registry=registry)
    recipe = generate_recipe(table, target_bpw=step.target_bpw, target_size=step.target_size, search=step.search,
                             registry=registry)
    state.model = apply_recipe(state.model, recipe, table=table, registry=registry, progress=progress,
                               calibration_data=raw)
    state.compressor = None
    path = state.out_dir / recipe_file(index)
    with atomic.temp_path(path, overwrite=state.overwrite) as tmp:
        recipe.save(tmp)
    state.result.artifacts.append(path)
    counts: dict[str, int] = {}
    for entry in recipe.layers:
        counts[entry.candidate] = counts.get(entry.candidate, 0) + 1
    mix = ", ".join(f"{n}x {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{len(recipe.layers)} layers: {mix}"


def _export(step: ExportStep, index: int, state: _State) -> str:
    impl = state.registry.get("export_backend", step.backend)
    compressor = state.compressor
    if compressor is not None and hasattr(compressor, "finalize"):
        exported = compressor.finalize(backend=step.backend)
    else:
        exported = export_finalize(state.model, step.backend, registry=state.registry)
    state.result.exported[index] = exported
    if not hasattr(impl, "save"):
        return ""
    path = state.out_dir / export_path(step, impl)
    with atomic.temp_path(path, overwrite=state.overwrite) as tmp:
        written = Path(impl.save(exported, tmp, example_inputs=_example_inputs(state.example), **step.options))
        if written != tmp:
            raise PluginError(f"export backend {step.backend!r} wrote {written} instead of the path it was given "
                              f"({tmp}); a backend's save(model, path) must write exactly path")
    size = _nbytes(path)
    fp32 = state.fp32
    artifact = ArtifactReport(step=index, backend=step.backend, path=str(path), bytes=size,
                              ratio_vs_fp32=fp32.total.bytes / size if size else float("inf"))
    state.result.report.artifacts.append(artifact)
    state.result.artifacts.append(path)
    return f"{artifact.path} ({artifact.bytes} B, {artifact.ratio_vs_fp32:.2f}x smaller)"


RUNNERS: dict[type, Callable[[Any, int, _State], str]] = {
    PalettizeStep: _palettize,
    QuantizeStep: _quantize,
    MixedPrecisionStep: _mixed_precision,
    ExportStep: _export,
}
"""Step class -> ``run(step, index, state) -> detail`` (the report's notes); one entry per :data:`STEP_TYPES`."""

_missing = [tag for tag, kind in STEP_TYPES.items() if kind.cls not in RUNNERS]
if _missing:  # pragma: no cover - a step type registered without a runner
    raise ImportError(f"pipeline step types without a runner: {', '.join(_missing)}")


def _nbytes(path: Path) -> int:
    if path.is_dir():  # packages such as .mlpackage
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _step_report(index: int, kind: str, label: str, seconds: float, model: nn.Module,
                 reference: Optional[torch.Tensor], example: Any, detail: str) -> StepReport:
    from ..palettization.report import sqnr_db

    size = model_size(model)
    n_tensors = len({id(r) for *_, r in compressed.iter_records(model)
                     if not isinstance(r, compressed.ActivationQuant)})
    sqnr = None
    if reference is not None:
        out = _output(model, example)
        sqnr = sqnr_db(reference, out) if out is not None and out.shape == reference.shape else None
    return StepReport(index=index, type=kind, name=label, seconds=round(seconds, 3), model_mib=size.mib,
                      bpw=size.bpw, bpw_index=size.bpw_index, compressed_tensors=n_tensors,
                      output_sqnr_db=sqnr, detail=detail)


__all__ = ["RUNNERS", "PipelineResult", "compress", "run_pipeline"]
