"""Pipeline configs: one YAML document describes a whole compression job.

::

    pipeline:
      model: mypkg.models:build            # function returning the uncompressed nn.Module
      data: mypkg.data:calibration         # function returning a batch or a list of batches
      output_dir: artifacts/job            # artifacts + report.json/.txt (default artifacts/<file stem>)
      steps:
        - type: palettize                  # any registered palettizer, or any clusterer
          algorithm: kmeans
          config: {global_config: {op_state_spec: {weight: {n_bits: 4}}}}
        - type: quantize                   # any registered quantizer
          quantizer: int8
          config: {global_config: {op_state_spec: null}}
        - type: mixed_precision            # sensitivity -> recipe -> apply
          metric: psnr
          search: greedy
          target_bpw: 4
        - type: export                     # any registered export backend
          backend: onnx
          path: model.onnx

Steps are tagged by ``type:``; every algorithm is named by its registered name, so
swapping kmeans for sensitive_kmeans, greedy for optimal or onnx for coreml is a
one-word edit. :func:`load_pipeline` structures the document with the core converter
and then :func:`validate` checks every name against the plugin registry, each step's
``config`` against the class the named algorithm takes, the step order and the
``module:function`` references, all before any model work. Every problem is one line
of a :class:`~bitsmith.errors.ConfigError` that starts with its dotted path, e.g.
``steps.1.backend: 'onxx' is not a registered export backend; available: coreml, onnx,
safetensors (did you mean 'onnx'?)``.

A pipeline file is code, like a Makefile: ``model:`` and ``data:`` call the functions
they name. Nothing is added to ``sys.path`` unless the file's ``python_path:`` (folders
relative to the file) or the CLI's ``--path`` asks for it, and those folders go *after*
the installed packages, so a folder next to the file never shadows an installed library.

Step kinds are dispatched through :data:`STEP_TYPES` (``type:`` tag -> :class:`StepKind`:
the step class, its validator and its stage), so a new kind is one entry, not a branch
in every function.
"""

from __future__ import annotations

import difflib
import math
import os
import posixpath
from pathlib import Path
from typing import Any, Callable, Optional, Union

import attrs
import yaml
from attrs import define, field

from .. import plugins, safe_yaml
from ..protocols import config_class_of
from ..config import converter, from_dict
from ..config.converter import _FieldError
from ..errors import ConfigError, PluginError
from .imports import extra_sys_path

PIPELINE_KEY = "pipeline"
"""Optional top-level key of a pipeline YAML document."""

SCHEMA_VERSION = 1
"""Version of the pipeline document and of the report it writes."""


def _name(instance, attribute, value) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{attribute.name}: expected a registered name (a non-empty string), got {value!r}")


def _callable_ref(instance, attribute, value) -> None:
    if value is None:
        return
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        raise ValueError(f"{attribute.name}: expected 'package.module:function', got {value!r}")


def _optional_mapping(instance, attribute, value) -> None:
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{attribute.name}: expected a mapping (the algorithm's config) or null, got {value!r}")


def _positive_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name}: expected a positive integer, got {value!r}")


def _optional_positive_int(instance, attribute, value) -> None:
    if value is not None:
        _positive_int(instance, attribute, value)


def _optional_positive_number(instance, attribute, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name}: expected a finite positive number, got {safe_yaml.short(value)}")


def _optional_str(instance, attribute, value) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"{attribute.name}: expected a string or null, got {value!r}")


def _folders(instance, attribute, value) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"{attribute.name}: expected a list of folders (strings), got {safe_yaml.short(value)}")


def _kwargs(instance, attribute, value) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{attribute.name}: expected a mapping of keyword arguments, got {value!r}")


@define(kw_only=True)
class PalettizeStep:
    """Palettize weights with a registered palettizer (``kmeans``, ``sensitive_kmeans``, ``dkm``) or clusterer.

    ``config`` is the palettizer's config (a ``KMeansPalettizerConfig`` document, or the
    palettizer's own config class); ``null`` uses its default. A name registered only
    as a clusterer runs the core ``Palettizer`` with that clusterer. Calibration batches
    are passed as ``example_inputs`` (sensitive k-means uses them for its Fisher).
    """

    algorithm: str = field(default="kmeans", validator=_name)
    config: Optional[dict] = field(default=None, validator=_optional_mapping)
    num_workers: int = field(default=1, validator=_positive_int)
    seed: Optional[int] = field(default=None)

    def label(self) -> str:
        """The algorithm's registered name (progress lines and the report)."""
        return self.algorithm


@define(kw_only=True)
class QuantizeStep:
    """Quantize with a registered quantizer (``int8``): prepare, calibrate on the data, keep for export.

    ``config`` is a ``QuantizerConfig`` document (``null``: W8A8 default);
    ``calibration_batches`` limits how many data batches calibrate (all by default).
    After a palettize step this is joint compression (palettized weights are left alone).
    """

    quantizer: str = field(default="int8", validator=_name)
    config: Optional[dict] = field(default=None, validator=_optional_mapping)
    calibration_batches: Optional[int] = field(default=None, validator=_optional_positive_int)

    def label(self) -> str:
        """The quantizer's registered name."""
        return self.quantizer


@define(kw_only=True)
class MixedPrecisionStep:
    """Per-layer bit widths from a sensitivity table: :mod:`bitsmith.mixed_precision`'s three stages.

    Exactly one of ``target_bpw`` (all-in bits per weight) and ``target_size`` (MiB).
    ``candidates`` are labels such as ``"4-bit g16"`` (default 2/4/6-bit per-tensor).
    """

    metric: str = field(default="psnr", validator=_name)
    search: str = field(default="greedy", validator=_name)
    palettizer: str = field(default="kmeans", validator=_name)
    target_bpw: Optional[float] = field(default=None, validator=_optional_positive_number)
    target_size: Optional[float] = field(default=None, validator=_optional_positive_number)
    candidates: Optional[list[Any]] = None
    layers: Optional[list[str]] = None
    engine: str = field(default="auto", validator=_name)
    cache_dir: Optional[str] = field(default=".bitsmith-cache", validator=_optional_str)
    num_workers: int = field(default=1, validator=_positive_int)

    def __attrs_post_init__(self) -> None:
        if (self.target_bpw is None) == (self.target_size is None):
            raise ValueError("target_bpw: give exactly one of target_bpw (bits per weight) or target_size (MiB)")

    def label(self) -> str:
        """``metric/search/palettizer``."""
        return f"{self.metric}/{self.search}/{self.palettizer}"


@define(kw_only=True)
class ExportStep:
    """Export the current model with a registered backend; file backends write ``path`` (under ``output_dir``).

    ``path`` defaults to ``model`` plus the backend's suffix (``model.onnx``);
    ``options`` are extra keyword arguments of the backend's ``save`` (e.g. ONNX's
    ``dynamic_batch: true``).
    """

    backend: str = field(validator=_name)
    path: Optional[str] = field(default=None, validator=_optional_str)
    options: dict[str, Any] = field(factory=dict, validator=_kwargs)

    def label(self) -> str:
        """The backend's registered name."""
        return self.backend


Check = Callable[[Any, str, dict, plugins.Registry], list]


@define(frozen=True)
class StepKind:
    """One ``type:`` of step: its class, its validator and its stage.

    ``check(step, where, names, registry)`` returns error lines (each starting with
    ``where``, the step's dotted path); ``names`` maps hook kinds to registered names.
    ``stage`` orders compression: ``"weights"`` (at most one such step), then
    ``"activations"`` (at most one); ``"output"`` steps may come anywhere. ``needs_data``
    is the reason a step needs calibration data, or ``None``. The runner keeps the
    matching functions in :data:`bitsmith.pipeline.runner.RUNNERS`.
    """

    cls: type
    check: Check
    stage: str
    needs_data: Optional[str] = None


STEP_TYPES: dict[str, StepKind] = {}
"""``type:`` tag -> :class:`StepKind` of every step (filled below, in YAML order)."""

STAGES = ("weights", "activations", "output")
"""Allowed :attr:`StepKind.stage` values, in pipeline order."""


def register_step(tag: str, kind: StepKind) -> None:
    """Add a step type under ``tag`` (a new ``type:`` value); the runner needs one entry too."""
    if tag in STEP_TYPES:
        raise ValueError(f"step type {tag!r} is already registered ({STEP_TYPES[tag].cls.__name__})")
    if kind.stage not in STAGES:
        raise ValueError(f"step type {tag!r}: stage {kind.stage!r} is not one of {', '.join(STAGES)}")
    STEP_TYPES[tag] = kind
    converter.register_unstructure_hook(kind.cls, _unstructure_step)


Step = Union[PalettizeStep, QuantizeStep, MixedPrecisionStep, ExportStep]


def step_type(step: Any) -> str:
    """The ``type:`` tag of a step object."""
    for tag, kind in STEP_TYPES.items():
        if type(step) is kind.cls:
            return tag
    raise TypeError(f"not a pipeline step: {step!r}")


def _structure_step(value: Any, _type: Any) -> Any:
    if isinstance(value, tuple(kind.cls for kind in STEP_TYPES.values())):
        return value
    if not isinstance(value, dict) or "type" not in value:
        raise _FieldError(f"type: expected a mapping with a 'type' key, one of {', '.join(STEP_TYPES)}; "
                          f"got {safe_yaml.short(value)}")
    tag = value["type"]
    if tag not in STEP_TYPES:
        close = difflib.get_close_matches(str(tag), STEP_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _FieldError(f"type: {safe_yaml.short(repr(tag))} is not one of {', '.join(STEP_TYPES)}{hint}")
    cls = STEP_TYPES[tag].cls
    missing = [f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING and f.name not in value]
    if missing:
        raise _FieldError(f"{missing[0]}: required key is missing")
    return converter.structure({k: v for k, v in value.items() if k != "type"}, cls)


def _unstructure_step(step: Any) -> dict:
    return {"type": step_type(step), **{f.name: converter.unstructure(getattr(step, f.name))
                                        for f in attrs.fields(type(step))}}


converter.register_structure_hook(Step, _structure_step)


def _steps(instance, attribute, value) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError("steps: expected a non-empty list of steps")


@define(kw_only=True)
class PipelineConfig:
    """A whole job: model factory, calibration data, ordered steps, where artifacts go.

    ``model``/``data`` are ``'package.module:function'`` references called with
    ``model_kwargs``/``data_kwargs`` (``model`` may be omitted when
    :func:`bitsmith.compress` is given the model; ``data`` when no step needs data).
    They resolve on ``sys.path`` only, plus the folders of ``python_path`` (relative
    to the pipeline file's folder; appended after the installed packages while the
    pipeline is validated and run). The first data batch is the example input of
    tracing exporters and of the report's output SQNR.
    """

    steps: list[Step] = field(validator=_steps)
    model: Optional[str] = field(default=None, validator=_callable_ref)
    model_kwargs: dict[str, Any] = field(factory=dict, validator=_kwargs)
    data: Optional[str] = field(default=None, validator=_callable_ref)
    data_kwargs: dict[str, Any] = field(factory=dict, validator=_kwargs)
    output_dir: Optional[str] = field(default=None, validator=_optional_str)
    name: Optional[str] = field(default=None, validator=_optional_str)
    python_path: list[str] = field(factory=list, validator=_folders)
    schema_version: int = field(default=SCHEMA_VERSION)

    def __attrs_post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version: {self.schema_version!r} is not supported; this bitsmith reads "
                             f"version {SCHEMA_VERSION}")


# --------------------------------------------------------------------------- loading


def _is_path(source: Any) -> bool:
    return isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                        and source.endswith((".yaml", ".yml", ".json")))


def _document(source: Union[str, os.PathLike, dict]) -> tuple[Any, str, Optional[Path]]:
    """(parsed document, label for messages, folder that relative ``python_path`` entries start from)."""
    if isinstance(source, dict):
        return source, "pipeline", None
    if _is_path(source):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: no such pipeline file")
        return safe_yaml.load_file(path), str(path), path.resolve().parent
    if isinstance(source, str):
        return safe_yaml.load(source, source="pipeline"), "pipeline", None
    raise ConfigError(f"cannot load a pipeline from {type(source).__name__}")


def load_pipeline(source: Union[str, os.PathLike, dict, PipelineConfig], *, registry: Optional[plugins.Registry] = None,
                  check: bool = True) -> PipelineConfig:
    """A :class:`PipelineConfig` from a YAML/JSON path, YAML text or a dict (``pipeline:`` key optional).

    With ``check`` (default) the result is also :func:`validate`-d against ``registry``.
    Raises :class:`ConfigError` listing every problem with its dotted path.
    """
    if isinstance(source, PipelineConfig):
        config = source
    else:
        data, label, folder = _document(source)
        if isinstance(data, dict) and set(data) == {PIPELINE_KEY}:
            data = data[PIPELINE_KEY]  # paths in errors start below the key: steps.1.backend
        if not isinstance(data, dict):
            raise ConfigError(f"{label}: expected a mapping (optionally under {PIPELINE_KEY!r}) with a 'steps' list")
        config = from_dict(data, PipelineConfig)
        if folder is not None:  # python_path entries are relative to the pipeline file
            config.python_path = [str((folder / entry).resolve()) for entry in config.python_path]
    if check:
        validate(config, registry=registry)
    return config


# --------------------------------------------------------------------------- validation


def _unknown(kind_label: str, name: str, available: list[str], where: str) -> str:
    close = difflib.get_close_matches(name, available, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"{where}: {name!r} is not a registered {kind_label}; available: "
            f"{', '.join(available) or 'none installed'}{hint}")


def palettizer_class(name: str, registry: plugins.Registry) -> type:
    """The palettizer class for ``name``: a registered palettizer, or the core Palettizer on a registered clusterer."""
    if name in registry.names("palettizer"):
        return registry.get("palettizer", name)
    registry.get("cluster", name)
    from ..palettization import Palettizer

    return type(f"{name.title().replace('_', '')}Palettizer", (Palettizer,), {"algorithm": name,
                                                                               "__module__": __name__})


REPORT_FILES = ("report.json", "report.txt")
"""Files every run writes into the output folder; no export may use these names."""


def recipe_file(index: int) -> str:
    """Name of the recipe a ``mixed_precision`` step at ``index`` writes into the output folder."""
    return f"recipe_step{index}.yaml"


def config_class(impl: Any, default: type) -> type:
    """The config class a palettizer or quantizer takes: its ``config_class`` attribute, else ``default``.

    The validator and the runner both read it through this function, so an
    implementation without the attribute (docs/plugins.md makes it optional) runs
    exactly as it validates.
    """
    return config_class_of(impl, default)


def export_path(step: ExportStep, impl: Any) -> str:
    """The export's path relative to the output folder: ``path``, else ``model`` + the backend's suffix."""
    return step.path or f"model{getattr(impl, 'suffix', '') or ''}"


def _relative_inside(path: str) -> Optional[str]:
    """``path`` normalized (``a/./b`` -> ``a/b``) if it stays inside the output folder, else ``None``."""
    if os.path.isabs(path) or Path(path).is_absolute() or path.startswith(("/", "\\")):
        return None
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm in (".", "") or norm == ".." or norm.startswith("../"):
        return None
    return norm


def output_files(config: PipelineConfig, registry: plugins.Registry) -> tuple[dict[str, str], list[str]]:
    """(relative file -> the ``steps.<i>`` or ``report`` writing it, error lines) for every file a run writes.

    Export paths must be relative, stay inside the output folder and differ from each
    other, from the recipes and from ``report.json``/``report.txt``.
    """
    owners: dict[str, str] = {name: "the run's report" for name in REPORT_FILES}
    errors: list[str] = []
    exports = registry.names("export_backend")
    for i, step in enumerate(config.steps):
        where = f"steps.{i}"
        if isinstance(step, MixedPrecisionStep):
            owners[recipe_file(i)] = f"{where} (its recipe)"
        if not isinstance(step, ExportStep) or step.backend not in exports:
            continue
        impl = registry.get("export_backend", step.backend)
        if not hasattr(impl, "save"):
            continue
        raw = export_path(step, impl)
        rel = _relative_inside(raw)
        if rel is None:
            errors.append(f"{where}.path: {safe_yaml.short(raw)!r} is outside the output folder; give a relative "
                          "path inside it (no absolute path, no '..')")
            continue
        clash = owners.get(rel) or next((o for f, o in owners.items() if f.lower() == rel.lower()), None)
        if clash is not None:
            errors.append(f"{where}.path: {rel!r} is also written by {clash}; give each export its own path")
            continue
        owners[rel] = where
    for rel, owner in list(owners.items()):  # a file whose folder is another output file
        for parent in Path(rel).parents:
            if str(parent) in owners and parent != Path("."):
                errors.append(f"{owner}.path: {rel!r} would be written inside {str(parent)!r}, which "
                              f"{owners[str(parent)]} writes")
    return owners, errors


def validate(config: PipelineConfig, *, registry: Optional[plugins.Registry] = None) -> PipelineConfig:
    """Check names, step configs, step order, output paths and references; one :class:`ConfigError` lists every problem."""
    registry = registry or plugins.default_registry()
    errors: list[str] = []
    names = {kind: registry.names(kind) for kind in ("palettizer", "cluster", "quantizer", "sensitivity_metric",
                                                     "recipe_search", "export_backend")}
    first_of: dict[str, str] = {}  # stage -> "steps.<i> (<type>)" of its step
    needs_data = []
    for i, step in enumerate(config.steps):
        where, tag = f"steps.{i}", step_type(step)
        kind = STEP_TYPES[tag]
        errors += kind.check(step, where, names, registry)
        if kind.needs_data:
            needs_data.append(f"{where} ({kind.needs_data})")
        errors += _check_stage(kind.stage, tag, where, first_of)
    _, path_errors = output_files(config, registry)
    errors += path_errors
    if config.data is None and needs_data:
        errors.append(f"data: required by {', '.join(needs_data)}; give 'package.module:function' returning "
                      "a batch or a list of batches")
    from ..loading import import_callable

    with extra_sys_path(config.python_path):
        for field_name in ("model", "data"):
            ref = getattr(config, field_name)
            if ref is not None:
                try:
                    import_callable(ref, field=field_name)
                except ConfigError as exc:
                    errors += exc.lines
    if errors:
        raise ConfigError(errors)
    return config


def _check_stage(stage: str, tag: str, where: str, first_of: dict[str, str]) -> list[str]:
    """Order rules: one weights step, one activations step, weights before activations."""
    errors = []
    if stage == "weights":
        if "weights" in first_of:
            errors.append(f"{where}.type: {tag} after {first_of['weights']}: weights are palettized once per "
                          "pipeline (put the layers in one config, or use mixed_precision alone)")
        if "activations" in first_of:
            errors.append(f"{where}.type: {tag} after quantize: palettize first, then quantize (joint "
                          "compression quantizes activations of the palettized model)")
    elif stage == "activations" and "activations" in first_of:
        errors.append(f"{where}.type: a second quantize step; one quantizer config covers the whole model")
    if stage != "output":
        first_of.setdefault(stage, f"{where} ({tag})")
    return errors


def _check_config(cls: type, body: Optional[dict], where: str) -> list[str]:
    if body is None:
        return []
    try:
        from_dict(body, cls)
    except ConfigError as exc:
        return [f"{where}.{line}" for line in exc.lines]
    return []


def _check_palettize(step: PalettizeStep, where: str, names: dict, registry: plugins.Registry) -> list[str]:
    known = sorted(set(names["palettizer"]) | set(names["cluster"]))
    if step.algorithm not in known:
        return [_unknown("palettizer or clusterer", step.algorithm, known, f"{where}.algorithm")]
    try:
        cls = palettizer_class(step.algorithm, registry)
    except PluginError as exc:
        return [f"{where}.algorithm: {exc}"]
    from ..config import KMeansPalettizerConfig

    return _check_config(config_class(cls, KMeansPalettizerConfig), step.config, f"{where}.config")


def _check_quantize(step: QuantizeStep, where: str, names: dict, registry: plugins.Registry) -> list[str]:
    if step.quantizer not in names["quantizer"]:
        return [_unknown("quantizer", step.quantizer, names["quantizer"], f"{where}.quantizer")]
    from ..config import QuantizerConfig

    cls = registry.get("quantizer", step.quantizer)
    return _check_config(config_class(cls, QuantizerConfig), step.config, f"{where}.config")


def _check_export(step: ExportStep, where: str, names: dict, registry: plugins.Registry) -> list[str]:
    if step.backend not in names["export_backend"]:
        return [_unknown("export backend", step.backend, names["export_backend"], f"{where}.backend")]
    impl = registry.get("export_backend", step.backend)
    save = getattr(impl, "save", None)
    if save is None:
        bad = [f"{where}.{key}: export backend {step.backend!r} does not write files; remove {key!r}"
               for key in ("path", "options") if getattr(step, key)]
        return bad
    import inspect

    params = inspect.signature(save).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "example_inputs"]
    return [f"{where}.options.{key}: not an option of export backend {step.backend!r}; options: "
            f"{', '.join(allowed) or 'none'}" for key in step.options if key not in allowed]


def _check_mixed_precision(step: MixedPrecisionStep, where: str, names: dict, registry: plugins.Registry) -> list[str]:
    errors = []
    for field_name, kind, label in (("metric", "sensitivity_metric", "sensitivity metric"),
                                    ("search", "recipe_search", "recipe search"),
                                    ("palettizer", "palettizer", "palettizer")):
        value = getattr(step, field_name)
        if value not in names[kind]:
            errors.append(_unknown(label, value, names[kind], f"{where}.{field_name}"))
    from ..mixed_precision import ENGINES, resolve_candidates

    if step.engine not in ENGINES:
        errors.append(f"{where}.engine: {step.engine!r} is not one of {', '.join(ENGINES)}")
    if step.candidates is not None:
        try:
            for candidate in resolve_candidates(step.candidates):
                if candidate.palettizer is not None and candidate.palettizer not in names["palettizer"]:
                    errors.append(_unknown("palettizer", candidate.palettizer, names["palettizer"],
                                           f"{where}.candidates ({candidate.label!r})"))
        except (ConfigError, TypeError, ValueError) as exc:
            errors.append(f"{where}.candidates: {exc}")
    return errors


register_step("palettize", StepKind(PalettizeStep, _check_palettize, "weights"))
register_step("quantize", StepKind(QuantizeStep, _check_quantize, "activations", "quantize calibrates on it"))
register_step("mixed_precision", StepKind(MixedPrecisionStep, _check_mixed_precision, "weights",
                                          "mixed_precision scores on it"))
register_step("export", StepKind(ExportStep, _check_export, "output"))


def dump_pipeline(config: PipelineConfig) -> str:
    """YAML text of ``config`` under the ``pipeline:`` key (round-trips through :func:`load_pipeline`)."""
    return yaml.safe_dump({PIPELINE_KEY: converter.unstructure(config)}, sort_keys=False)


__all__ = ["ExportStep", "MixedPrecisionStep", "PIPELINE_KEY", "PalettizeStep", "PipelineConfig", "QuantizeStep",
           "REPORT_FILES", "SCHEMA_VERSION", "STAGES", "STEP_TYPES", "Step", "StepKind", "config_class",
           "dump_pipeline", "export_path", "load_pipeline", "output_files", "palettizer_class", "recipe_file",
           "register_step", "step_type", "validate"]
