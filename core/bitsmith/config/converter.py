"""The one cattrs converter for every config: dicts/YAML in, dicts/YAML out.

``from_dict``/``to_dict``/``from_yaml``/``to_yaml``/``load``/``dump`` round-trip
exactly. Granularities are tagged by ``type:``; module types are dotted class paths;
unknown keys, wrong types and out-of-range values raise one :class:`ConfigError`
whose lines start with the dotted path of the offending field.
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path
from typing import Any, TypeVar, Union

import attrs
import cattrs
import torch
import yaml
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .. import atomic, safe_yaml
from ..errors import ConfigError
from . import palettization as pal
from . import quantization as quant
from . import specs

T = TypeVar("T")

TOP_LEVEL_KEYS: dict[str, type] = {cls.yaml_key: cls for cls in (pal.KMeansPalettizerConfig, quant.QuantizerConfig)}
"""The core's YAML top-level keys and the config class each one holds (plugins add theirs: :func:`config_sections`)."""


class _FieldError(Exception):
    """A validator error raised while building one attrs object (message starts with the field name)."""


def _tagged_union(allowed: tuple[type, ...], field_name: str = "granularity"):
    tags = {tag: cls for tag, cls in specs.GRANULARITY_TAGS.items() if cls in allowed}

    def structure(value: Any, _type: Any) -> Any:
        if isinstance(value, tuple(allowed)):
            return value
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict) or "type" not in value:
            raise _FieldError(f"type: expected a mapping with a 'type' key, one of {', '.join(tags)}; got {value!r}")
        tag = value["type"]
        if tag not in tags:
            close = difflib.get_close_matches(str(tag), tags, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _FieldError(f"type: {tag!r} is not one of {', '.join(tags)}{hint}")
        rest = {k: v for k, v in value.items() if k != "type"}
        return converter.structure(rest, tags[tag])

    return structure


def _strict(kind: type, label: str):
    def structure(value: Any, _type: Any) -> Any:
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise _FieldError(f"expected {label}, got {value!r}")
        if kind is not int and not isinstance(value, kind):
            raise _FieldError(f"expected {label}, got {value!r}")
        return value

    return structure


def _attrs_hook_factory(cls: type):
    inner: Any = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)

    def structure(value: Any, _type: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise _FieldError(f"expected a mapping for {cls.__name__}, got {value!r}")
        try:
            return inner(value, cls)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError, ConfigError)):
                raise
            raise _FieldError(str(exc)) from exc

    return structure


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(specs.QuantizationScheme, lambda v, _t: specs._to_scheme(v))
    conv.register_unstructure_hook(torch.dtype, specs.dtype_name)
    conv.register_unstructure_hook(specs.QuantizationScheme, lambda s: s.value)
    conv.register_structure_hook(
        specs.PalettizationGranularity,
        _tagged_union((specs.PerTensorGranularity, specs.PerGroupedChannelGranularity)),
    )
    conv.register_structure_hook(
        specs.QuantizationGranularity,
        _tagged_union((specs.PerTensorGranularity, specs.PerChannelGranularity, specs.PerBlockGranularity)),
    )
    for tag, gcls in specs.GRANULARITY_TAGS.items():
        conv.register_unstructure_hook(gcls, functools.partial(_unstructure_granularity, tag))
    return conv


def _unstructure_granularity(tag: str, value: Any) -> dict:
    return {"type": tag, **attrs.asdict(value)}


converter = _make_converter()
"""The shared :class:`cattrs.Converter` (plugins register hooks for their own config classes here)."""

converter.register_structure_hook_factory(attrs.has, _attrs_hook_factory)


converter.register_unstructure_hook(specs.QuantizationSpec, make_dict_unstructure_fn(
    specs.QuantizationSpec, converter, dtype=override(unstruct_hook=specs.dtype_name)))
converter.register_unstructure_hook(pal.ModuleKMeansPalettizerConfig, make_dict_unstructure_fn(
    pal.ModuleKMeansPalettizerConfig, converter, on_incompatible=override(omit_if_default=True),
    algorithm=override(omit_if_default=True), options=override(omit_if_default=True)))


# --------------------------------------------------------------------------- errors


def _error_lines(exc: BaseException, path: str) -> list[str]:
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        lines: list[str] = []
        for sub, note in with_notes:
            name = getattr(note, "name", None)
            if name is None:
                name = getattr(note, "index", "?")
            lines += _error_lines(sub, f"{path}.{name}" if path else str(name))
        for sub in without:
            lines += _error_lines(sub, path)
        return lines
    if isinstance(exc, ForbiddenExtraKeysError):
        allowed = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        out = []
        for key in sorted(exc.extra_fields):
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"{path}.{key}" if path else key
            out.append(f"{where}: unknown key{hint}; allowed keys: {', '.join(allowed)}")
        return out
    if isinstance(exc, ConfigError):
        return [line for sub in exc.lines for line in _prefixed(sub, path)]
    if isinstance(exc, KeyError) and exc.args:
        key = str(exc.args[0])
        if path.rsplit(".", 1)[-1] == key:  # cattrs already put the attribute name on the path
            return [f"{path}: required key is missing"]
        return [f"{path}.{key}: required key is missing" if path else f"{key}: required key is missing"]
    return _prefixed(str(exc), path)


def _prefixed(message: str, path: str) -> list[str]:
    """``message`` (``field: text`` or plain text) under the dotted ``path``."""
    if ": " in message and " " not in message.split(": ", 1)[0]:
        head, rest = message.split(": ", 1)
        last = path.rsplit(".", 1)[-1] if path else ""
        if head == last:
            return [f"{path}: {rest}"]
        return [f"{path}.{head}: {rest}" if path else message]
    return [f"{path}: {message}" if path else message]


def from_dict(data: Any, cls: type[T]) -> T:
    """Build a config object of ``cls`` from plain data, or raise :class:`ConfigError`."""
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one ConfigError
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(_error_lines(exc, "")) from None


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config object (inverse of :func:`from_dict`)."""
    return converter.unstructure(obj)


def config_sections(registry: Any = None) -> dict[str, type]:
    """Every YAML top-level key and its config class: the core's, then each registered palettizer's and quantizer's.

    Plugins contribute sections through the registry: a palettizer or quantizer
    class's ``config_class`` (:class:`bitsmith.protocols.Configurable`) and that
    class's ``yaml_key``. Two classes claiming one
    key is a :class:`ConfigError` naming both.
    """
    from .. import plugins
    from ..protocols import config_class_of

    registry = registry or plugins.default_registry()
    sections = dict(TOP_LEVEL_KEYS)
    base_key = {"palettizer": pal.KMeansPalettizerConfig.yaml_key, "quantizer": quant.QuantizerConfig.yaml_key}
    for kind in ("palettizer", "quantizer"):
        for name in registry.names(kind):
            section = config_class_of(registry.get(kind, name), TOP_LEVEL_KEYS[base_key[kind]])
            other = sections.setdefault(section.yaml_key, section)
            if other is not section:
                raise ConfigError(f"{section.yaml_key}: claimed by {other.__module__}.{other.__qualname__} and by "
                                  f"{section.__module__}.{section.__qualname__} ({kind} {name!r})")
    return sections


def _detect(data: Any, cls: type | None) -> tuple[type, Any, str]:
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data)), str):
        key = next(iter(data))
        sections = TOP_LEVEL_KEYS if key in TOP_LEVEL_KEYS else config_sections()
        if key in sections:
            found = sections[key]
            if cls is not None and not issubclass(found, cls):
                raise ConfigError(f"{key}: expected a {cls.__name__} document, found {found.__name__}")
            return found, data[key], key
    if cls is None:
        sections = config_sections()
        got = ", ".join(map(str, data)) if isinstance(data, dict) else repr(data)
        close = difflib.get_close_matches(got, sections, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"top level: expected one of the keys {', '.join(sections)}; got {got}{hint}")
    return cls, data, ""


def from_yaml(text: str, cls: type[T] | None = None) -> T:
    """Parse YAML text (with or without its top-level key) into a config object."""
    data = safe_yaml.load(text, source="config")
    return _from_document(data, cls)


def _from_document(data: Any, cls: type[T] | None) -> T:
    """A config from a document with or without its top-level key; errors carry the key."""
    found, body, key = _detect(data, cls)
    try:
        return from_dict(body, found)
    except ConfigError as exc:
        if not key:
            raise
        raise ConfigError([f"{key}.{line}" for line in exc.lines]) from None


def top_level_key(cls: type) -> str:
    """The YAML top-level key of a config class (its ``yaml_key``)."""
    key = getattr(cls, "yaml_key", None)
    if not isinstance(key, str):
        raise TypeError(f"{cls.__name__} is not a top-level config class (it has no yaml_key)")
    return key


def to_yaml(obj: Any) -> str:
    """YAML text of a config object under its top-level key (``kmeans_palettization_config:``)."""
    return yaml.safe_dump({top_level_key(type(obj)): to_dict(obj)}, sort_keys=False)


def load(source: Union[str, os.PathLike, dict, Any], cls: type[T] | None = None) -> T:
    """A config from a YAML/JSON file path, YAML text, a dict, or an existing config object."""
    if cls is not None and isinstance(source, cls):
        return source
    if isinstance(source, dict):
        return _from_document(source, cls)
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml", ".json"))):
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"{path}: no such config file")
        return from_yaml(safe_yaml.read_text(path), cls)
    if isinstance(source, str):
        return from_yaml(source, cls)
    raise ConfigError(f"cannot load a config from {type(source).__name__}")


def dump(obj: Any, path: Union[str, os.PathLike, None] = None, *, overwrite: bool = False) -> str:
    """YAML text of ``obj``; also written atomically to ``path`` when given (replacing a file only with ``overwrite``)."""
    text = to_yaml(obj)
    if path is not None:
        atomic.write_text(path, text, overwrite=overwrite)
    return text
