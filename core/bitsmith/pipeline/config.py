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
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any, Optional, Union

import attrs
import yaml
from attrs import define, field

from .. import plugins
from ..config import converter, from_dict
from ..config.converter import _FieldError
from ..errors import ConfigError, PluginError

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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{attribute.name}: expected a positive number, got {value!r}")


def _optional_str(instance, attribute, value) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"{attribute.name}: expected a string or null, got {value!r}")


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


STEP_TYPES: dict[str, type] = {
    "palettize": PalettizeStep,
    "quantize": QuantizeStep,
    "mixed_precision": MixedPrecisionStep,
    "export": ExportStep,
}
"""``type:`` tag of every step class."""

Step = Union[PalettizeStep, QuantizeStep, MixedPrecisionStep, ExportStep]


def step_type(step: Any) -> str:
    """The ``type:`` tag of a step object."""
    for tag, cls in STEP_TYPES.items():
        if type(step) is cls:
            return tag
    raise TypeError(f"not a pipeline step: {step!r}")


def _structure_step(value: Any, _type: Any) -> Any:
    if isinstance(value, tuple(STEP_TYPES.values())):
        return value
    if not isinstance(value, dict) or "type" not in value:
        raise _FieldError(f"type: expected a mapping with a 'type' key, one of {', '.join(STEP_TYPES)}; got {value!r}")
    tag = value["type"]
    if tag not in STEP_TYPES:
        close = difflib.get_close_matches(str(tag), STEP_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _FieldError(f"type: {tag!r} is not one of {', '.join(STEP_TYPES)}{hint}")
    cls = STEP_TYPES[tag]
    missing = [f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING and f.name not in value]
    if missing:
        raise _FieldError(f"{missing[0]}: required key is missing")
    return converter.structure({k: v for k, v in value.items() if k != "type"}, cls)


def _unstructure_step(step: Any) -> dict:
    return {"type": step_type(step), **{f.name: converter.unstructure(getattr(step, f.name))
                                        for f in attrs.fields(type(step))}}


converter.register_structure_hook(Step, _structure_step)
for _cls in STEP_TYPES.values():
    converter.register_unstructure_hook(_cls, _unstructure_step)


def _steps(instance, attribute, value) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError("steps: expected a non-empty list of steps")


@define(kw_only=True)
class PipelineConfig:
    """A whole job: model factory, calibration data, ordered steps, where artifacts go.

    ``model``/``data`` are ``'package.module:function'`` references called with
    ``model_kwargs``/``data_kwargs`` (``model`` may be omitted when
    :func:`bitsmith.compress` is given the model; ``data`` when no step needs data).
    They resolve on ``sys.path`` plus, for a pipeline loaded from a file, that file's
    folder. The first data batch is the example input of tracing exporters and of
    the report's output SQNR.
    """

    steps: list[Step] = field(validator=_steps)
    model: Optional[str] = field(default=None, validator=_callable_ref)
    model_kwargs: dict[str, Any] = field(factory=dict, validator=_kwargs)
    data: Optional[str] = field(default=None, validator=_callable_ref)
    data_kwargs: dict[str, Any] = field(factory=dict, validator=_kwargs)
    output_dir: Optional[str] = field(default=None, validator=_optional_str)
    name: Optional[str] = field(default=None, validator=_optional_str)
    schema_version: int = field(default=SCHEMA_VERSION)

    def __attrs_post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version: {self.schema_version!r} is not supported; this bitsmith reads "
                             f"version {SCHEMA_VERSION}")


# --------------------------------------------------------------------------- loading


def _document(source: Union[str, os.PathLike, dict]) -> tuple[Any, str]:
    if isinstance(source, dict):
        return source, "pipeline"
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.endswith((".yaml", ".yml", ".json"))):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: no such pipeline file")
        text, label = path.read_text(), str(path)
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # model/data references may name modules next to the pipeline file
            sys.path.insert(0, folder)
    elif isinstance(source, str):
        text, label = source, "pipeline"
    else:
        raise ConfigError(f"cannot load a pipeline from {type(source).__name__}")
    try:
        return yaml.safe_load(text), label
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: invalid YAML: {exc}") from None


def load_pipeline(source: Union[str, os.PathLike, dict, PipelineConfig], *, registry: Optional[plugins.Registry] = None,
                  check: bool = True) -> PipelineConfig:
    """A :class:`PipelineConfig` from a YAML/JSON path, YAML text or a dict (``pipeline:`` key optional).

    With ``check`` (default) the result is also :func:`validate`-d against ``registry``.
    Raises :class:`ConfigError` listing every problem with its dotted path.
    """
    if isinstance(source, PipelineConfig):
        config = source
    else:
        data, label = _document(source)
        if isinstance(data, dict) and set(data) == {PIPELINE_KEY}:
            data = data[PIPELINE_KEY]  # paths in errors start below the key: steps.1.backend
        if not isinstance(data, dict):
            raise ConfigError(f"{label}: expected a mapping (optionally under {PIPELINE_KEY!r}) with a 'steps' list")
        config = from_dict(data, PipelineConfig)
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


def validate(config: PipelineConfig, *, registry: Optional[plugins.Registry] = None) -> PipelineConfig:
    """Check names, step configs, step order and references; raise one :class:`ConfigError` listing every problem."""
    registry = registry or plugins.default_registry()
    errors: list[str] = []
    names = {kind: registry.names(kind) for kind in ("palettizer", "cluster", "quantizer", "sensitivity_metric",
                                                     "recipe_search", "export_backend")}
    compressed_by = None
    quantized = False
    needs_data = []
    for i, step in enumerate(config.steps):
        where = f"steps.{i}"
        if isinstance(step, PalettizeStep):
            errors += _check_palettize(step, where, names, registry)
        elif isinstance(step, QuantizeStep):
            errors += _check_quantize(step, where, names, registry)
            needs_data.append(f"{where} (quantize calibrates on it)")
        elif isinstance(step, MixedPrecisionStep):
            errors += _check_mixed_precision(step, where, names)
            needs_data.append(f"{where} (mixed_precision scores on it)")
        elif isinstance(step, ExportStep):
            if step.backend not in names["export_backend"]:
                errors.append(_unknown("export backend", step.backend, names["export_backend"], f"{where}.backend"))
            else:
                errors += _check_export(step, where, registry.get("export_backend", step.backend))
            continue
        kind = step_type(step)
        if kind in ("palettize", "mixed_precision"):
            if compressed_by is not None:
                errors.append(f"{where}.type: {kind} after {compressed_by}: weights are palettized once per "
                              "pipeline (put the layers in one config, or use mixed_precision alone)")
            if quantized:
                errors.append(f"{where}.type: {kind} after quantize: palettize first, then quantize (joint "
                              "compression quantizes activations of the palettized model)")
            compressed_by = compressed_by or f"steps.{i} ({kind})"
        elif kind == "quantize":
            if quantized:
                errors.append(f"{where}.type: a second quantize step; one quantizer config covers the whole model")
            quantized = True
    if config.data is None and needs_data:
        errors.append(f"data: required by {', '.join(needs_data)}; give 'package.module:function' returning "
                      "a batch or a list of batches")
    from ..loading import import_callable

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

    return _check_config(getattr(cls, "config_class", KMeansPalettizerConfig), step.config, f"{where}.config")


def _check_quantize(step: QuantizeStep, where: str, names: dict, registry: plugins.Registry) -> list[str]:
    if step.quantizer not in names["quantizer"]:
        return [_unknown("quantizer", step.quantizer, names["quantizer"], f"{where}.quantizer")]
    from ..config import QuantizerConfig

    cls = registry.get("quantizer", step.quantizer)
    return _check_config(getattr(cls, "config_class", QuantizerConfig), step.config, f"{where}.config")


def _check_export(step: ExportStep, where: str, impl: Any) -> list[str]:
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


def _check_mixed_precision(step: MixedPrecisionStep, where: str, names: dict) -> list[str]:
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


def dump_pipeline(config: PipelineConfig) -> str:
    """YAML text of ``config`` under the ``pipeline:`` key (round-trips through :func:`load_pipeline`)."""
    return yaml.safe_dump({PIPELINE_KEY: converter.unstructure(config)}, sort_keys=False)


__all__ = ["ExportStep", "MixedPrecisionStep", "PIPELINE_KEY", "PalettizeStep", "PipelineConfig", "QuantizeStep",
           "SCHEMA_VERSION", "STEP_TYPES", "Step", "dump_pipeline", "load_pipeline", "palettizer_class", "step_type",
           "validate"]
