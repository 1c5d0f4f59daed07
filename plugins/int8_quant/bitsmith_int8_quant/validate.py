"""Up-front checks of a ``QuantizerConfig`` against what the int8 quantizer supports.

The core config model accepts every spec the API can express (float8 dtypes,
per-block activations, ...); this module rejects, before any model work, the ones
this quantizer cannot run, with the dotted path of each offending field and the
allowed values, all problems at once in one :class:`bitsmith.errors.ConfigError`.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

from bitsmith.config.specs import PerTensorGranularity, QuantizationSpec, granularity_tag
from bitsmith.errors import ConfigError

WEIGHT_DTYPES = ("int8", "uint8", "int4", "uint4")
"""Weight dtypes the int8 quantizer supports."""

ACTIVATION_DTYPES = ("int8", "uint8")
"""Activation dtypes the int8 quantizer supports (per-tensor only)."""

_IO_KEY = re.compile(r"\*|0|[1-9][0-9]*")

_STATE_FIELDS = ("op_state_spec", "module_state_spec")
_IO_FIELDS = ("op_input_spec", "op_output_spec", "module_input_spec", "module_output_spec")


def _module_configs(config: Any) -> Iterator[tuple[str, Any]]:
    if config.global_config is not None:
        yield "global_config", config.global_config
    for table in ("module_type_configs", "module_name_configs"):
        for key, value in getattr(config, table).items():
            if value is not None:
                yield f"{table}.{key}", value


def _spec_tables(path: str, module_config: Any) -> Iterator[tuple[str, str, dict]]:
    for name in _STATE_FIELDS + _IO_FIELDS:
        table = getattr(module_config, name, None)
        if table:
            yield f"{path}.{name}", name, table
    for group in ("op_type_config", "op_name_config"):
        for key, op in getattr(module_config, group, {}).items():
            if op is None:
                continue
            for name in ("op_state_spec", "op_input_spec", "op_output_spec"):
                table = getattr(op, name, None)
                if table:
                    yield f"{path}.{group}.{key}.{name}", name, table


def spec_problems(spec: QuantizationSpec, path: str, kind: str, observers: Sequence[str]) -> list[str]:
    """Problems of one spec used for a ``kind`` (``"weight"`` or ``"activation"``) tensor."""
    problems = []
    allowed = WEIGHT_DTYPES if kind == "weight" else ACTIVATION_DTYPES
    if spec.dtype_name not in allowed:
        why = "float8 needs a float8 quantizer" if spec.is_float8 else f"not a supported {kind} dtype"
        problems.append(f"{path}.dtype: {spec.dtype_name} is not one of {', '.join(allowed)} ({why})")
    if kind == "activation" and not isinstance(spec.granularity, PerTensorGranularity):
        problems.append(f"{path}.granularity: {granularity_tag(spec.granularity)} is not supported for activations "
                        "(one scale per tensor); allowed: per_tensor")
    if spec.observer not in observers:
        problems.append(f"{path}.observer: {spec.observer!r} is not one of {', '.join(observers) or 'none'} "
                        "(registered observers)")
    return problems


def config_problems(config: Any, observers: Sequence[str]) -> list[str]:
    """Every problem of ``config`` (a ``QuantizerConfig``), as dotted-path lines."""
    problems = []
    for path, module_config in _module_configs(config):
        for table_path, name, table in _spec_tables(path, module_config):
            io = name in _IO_FIELDS
            for key, spec in table.items():
                if io and not _IO_KEY.fullmatch(key):
                    problems.append(f"{table_path}.{key}: key {key!r} is not an input/output index "
                                    "('0', '1', ...) or '*'")
                if spec is not None:
                    kind = "activation" if io else "weight"
                    problems.extend(spec_problems(spec, f"{table_path}.{key}", kind, observers))
    return problems


def check_config(config: Any, observers: Sequence[str]) -> None:
    """Raise :class:`ConfigError` listing every unsupported spec of ``config``."""
    problems = config_problems(config, observers)
    if problems:
        raise ConfigError(problems)
