"""Run a pipeline: build or take the model, load data, run each step, write artifacts and the report."""

from __future__ import annotations

import copy
import inspect
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from attrs import define, field
from torch import nn

from .. import compressed, plugins
from ..config import from_dict
from ..errors import ConfigError
from ..export import finalize as export_finalize
from ..loading import import_callable
from ..sizes import model_size
from .config import (
    ExportStep,
    MixedPrecisionStep,
    PalettizeStep,
    PipelineConfig,
    QuantizeStep,
    load_pipeline,
    palettizer_class,
    step_type,
)
from .report import ArtifactReport, PipelineReport, StepReport

Echo = Callable[[str], None]


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
             progress: Optional[bool] = None, echo: Optional[Echo] = None) -> PipelineResult:
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
    """
    registry = registry or plugins.default_registry()
    stem = Path(config).stem if isinstance(config, (str, os.PathLike)) and str(config).endswith(
        (".yaml", ".yml", ".json")) else "pipeline"
    config = load_pipeline(config, registry=registry, check=False)
    _validate_with_inputs(config, registry, has_data=data is not None)
    echo = echo or _quiet
    started = time.perf_counter()
    model = _build_model(model, config)
    raw, batches = _load_data(data, config)
    out_dir = Path(output_dir if output_dir is not None else config.output_dir or f"artifacts/{stem}")
    out_dir.mkdir(parents=True, exist_ok=True)
    example = batches[0] if batches else None
    model = copy.deepcopy(model).eval()
    fp32 = model_size(model)
    reference = _output(model, example)
    report = PipelineReport(name=config.name or out_dir.name, fp32_mib=fp32.mib)
    result = PipelineResult(model=model, report=report, config=config)
    compressor: Any = None
    total = len(config.steps)
    for index, step in enumerate(config.steps):
        kind = step_type(step)
        label = _step_name(step)
        echo(f"[{index + 1}/{total}] {kind} {label} ...")
        t0 = time.perf_counter()
        detail = ""
        if isinstance(step, PalettizeStep):
            model, compressor = _palettize(step, model, raw, registry, progress)
            if not compressed.is_compressed(model):
                detail = "trainable (no records until export; the pipeline does not train)"
        elif isinstance(step, QuantizeStep):
            model, compressor = _quantize(step, model, batches, registry)
            detail = f"{_n_activations(model, compressor)} activations"
        elif isinstance(step, MixedPrecisionStep):
            model, recipe_path, detail = _mixed_precision(step, index, model, raw, out_dir, registry, progress)
            compressor = None
            result.artifacts.append(recipe_path)
        elif isinstance(step, ExportStep):
            exported, artifact = _export(step, index, model, compressor, example, out_dir, registry, fp32)
            result.exported[index] = exported
            if artifact is not None:
                report.artifacts.append(artifact)
                result.artifacts.append(Path(artifact.path))
                detail = f"{artifact.path} ({artifact.bytes} B, {artifact.ratio_vs_fp32:.2f}x smaller)"
        seconds = time.perf_counter() - t0
        row = _step_report(index, kind, label, seconds, model, reference, example, detail)
        report.steps.append(row)
        sqnr = "" if row.output_sqnr_db is None else f", output SQNR {row.output_sqnr_db:.1f} dB"
        echo(f"[{index + 1}/{total}] {kind} {label}: {seconds:.1f} s, {row.model_mib:.3f} MiB, "
             f"BPW {row.bpw:.2f}{sqnr}{', ' + detail if detail else ''}")
    result.model = model
    report.seconds = time.perf_counter() - started
    result.artifacts += list(report.write(out_dir))
    return result


def run_pipeline(source: Union[PipelineConfig, dict, str, os.PathLike], *, output_dir: Union[str, os.PathLike, None] = None,
                 registry: Optional[plugins.Registry] = None, progress: Optional[bool] = None,
                 echo: Optional[Echo] = None) -> PipelineResult:
    """Run a pipeline whose ``model`` (and ``data``) come from the config itself."""
    return compress(None, source, output_dir=output_dir, registry=registry, progress=progress, echo=echo)


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


def _step_name(step: Any) -> str:
    if isinstance(step, PalettizeStep):
        return step.algorithm
    if isinstance(step, QuantizeStep):
        return step.quantizer
    if isinstance(step, MixedPrecisionStep):
        return f"{step.metric}/{step.search}/{step.palettizer}"
    return step.backend


def _accepts(fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _instantiate(cls: Any, model: nn.Module, config: Any, registry: plugins.Registry) -> Any:
    try:
        takes_registry = "registry" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_registry = False
    return cls(model, config, registry=registry) if takes_registry else cls(model, config)


def _palettize(step: PalettizeStep, model: nn.Module, raw: list[Any], registry: plugins.Registry,
               progress: Optional[bool]) -> tuple[nn.Module, Any]:
    cls = palettizer_class(step.algorithm, registry)
    config = None if step.config is None else from_dict(step.config, cls.config_class)
    palettizer = _instantiate(cls, model, config, registry)
    kwargs = _accepts(palettizer.prepare, progress=progress, num_workers=step.num_workers, seed=step.seed)
    prepared = palettizer.prepare(raw or None, **kwargs)
    return prepared, palettizer


def _quantize(step: QuantizeStep, model: nn.Module, batches: list[tuple[tuple, dict]],
              registry: plugins.Registry) -> tuple[nn.Module, Any]:
    from ..config import QuantizerConfig

    cls = registry.get("quantizer", step.quantizer)
    config = None if step.config is None else from_dict(step.config, getattr(cls, "config_class", QuantizerConfig))
    quantizer = _instantiate(cls, model, config, registry)
    prepared = quantizer.prepare(_example_inputs(batches[0]))
    use = batches if step.calibration_batches is None else batches[:step.calibration_batches]
    with quantizer.calibration_mode(), torch.no_grad():
        for batch in use:
            _call(prepared, batch)
    return prepared, quantizer


def _n_activations(model: nn.Module, quantizer: Any) -> int:
    sites = getattr(quantizer, "activation_sites", None)
    if callable(sites):
        sites = sites()
    if isinstance(sites, (list, tuple)):
        return len(sites)
    return sum(1 for *_, r in compressed.iter_records(model) if isinstance(r, compressed.ActivationQuant))


def _mixed_precision(step: MixedPrecisionStep, index: int, model: nn.Module, raw: list[Any], out_dir: Path,
                     registry: plugins.Registry, progress: Optional[bool]) -> tuple[nn.Module, Path, str]:
    from ..mixed_precision import apply_recipe, compute_sensitivity, generate_recipe

    table = compute_sensitivity(model, raw, step.candidates, metric=step.metric, palettizer=step.palettizer,
                                layers=step.layers, cache_dir=step.cache_dir, num_workers=step.num_workers,
                                progress=progress, engine=step.engine, registry=registry)
    recipe = generate_recipe(table, target_bpw=step.target_bpw, target_size=step.target_size, search=step.search,
                             registry=registry)
    compressed_model = apply_recipe(model, recipe, table=table, registry=registry, progress=progress,
                                    calibration_data=raw)
    path = recipe.save(out_dir / f"recipe_step{index}.yaml")
    counts: dict[str, int] = {}
    for entry in recipe.layers:
        counts[entry.candidate] = counts.get(entry.candidate, 0) + 1
    mix = ", ".join(f"{n}x {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return compressed_model, Path(path), f"{len(recipe.layers)} layers: {mix}"


def _export(step: ExportStep, index: int, model: nn.Module, compressor: Any, example: Any, out_dir: Path,
            registry: plugins.Registry, fp32: Any) -> tuple[nn.Module, Optional[ArtifactReport]]:
    impl = registry.get("export_backend", step.backend)
    if compressor is not None and hasattr(compressor, "finalize"):
        exported = compressor.finalize(backend=step.backend)
    else:
        exported = export_finalize(model, step.backend, registry=registry)
    if not hasattr(impl, "save"):
        return exported, None
    path = out_dir / (step.path or f"model{getattr(impl, 'suffix', '') or ''}")
    written = Path(impl.save(exported, path, example_inputs=_example_inputs(example), **step.options))
    size = _nbytes(written)
    return exported, ArtifactReport(step=index, backend=step.backend, path=str(written), bytes=size,
                                    ratio_vs_fp32=fp32.total.bytes / size if size else float("inf"))


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


__all__ = ["PipelineResult", "compress", "run_pipeline"]
