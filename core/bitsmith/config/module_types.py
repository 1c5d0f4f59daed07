"""Module types named in configs: canonical dotted names and a controlled lookup.

Configs key ``module_type_configs`` by dotted class paths such as
``torch.nn.modules.linear.Linear``. Strings are never imported: torch's own module
classes resolve through a table built from ``torch.nn``, classes registered with
:func:`register_module_type` resolve through that registry, and any other dotted
path is kept as written and matched against the classes found in the model.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

_registered: dict[str, type] = {}
_torch_table: dict[str, type] | None = None


def canonical_name(cls: type) -> str:
    """``module.qualname`` of a class, e.g. ``torch.nn.modules.linear.Linear``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_module_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Make a custom module class resolvable by its dotted name and short aliases."""
    _registered[canonical_name(cls)] = cls
    return cls


def _torch_module_classes() -> dict[str, type]:
    global _torch_table
    if _torch_table is None:
        table: dict[str, type] = {}
        for obj in vars(torch.nn).values():
            if isinstance(obj, type) and issubclass(obj, nn.Module):
                table[canonical_name(obj)] = obj
        for alias_module in (nn, ):
            for short, obj in vars(alias_module).items():
                if isinstance(obj, type) and issubclass(obj, nn.Module):
                    table.setdefault(f"torch.nn.{short}", obj)
                    table.setdefault(f"nn.{short}", obj)
                    table.setdefault(short, obj)
        _torch_table = table
    return _torch_table


def known_module_types() -> dict[str, type]:
    """Every name the lookup resolves (torch.nn classes, their aliases, registered classes)."""
    table = dict(_torch_module_classes())
    for name, cls in _registered.items():
        table[name] = cls
        table.setdefault(cls.__qualname__, cls)
    return table


def normalize_module_type(key: object) -> str:
    """Canonical string key for a module type given as a class or a dotted name.

    A torch class name that does not exist (``torch.nn.Linaer``) is an error that
    lists the closest known names; a dotted path outside torch is kept verbatim.
    """
    if isinstance(key, type):
        if not issubclass(key, nn.Module):
            raise TypeError(f"{key!r} is not a torch.nn.Module subclass")
        return canonical_name(key)
    if not isinstance(key, str) or not key:
        raise TypeError(f"module type: expected an nn.Module class or a dotted name, got {key!r}")
    table = known_module_types()
    if key in table:
        return canonical_name(table[key])
    looks_like_torch = key.startswith(("torch.", "nn.")) or "." not in key
    if looks_like_torch:
        close = difflib.get_close_matches(key, table.keys(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown module type {key!r}{hint}")
    return key


def type_names(cls: type) -> list[str]:
    """Canonical names of ``cls`` and its ``nn.Module`` bases, most specific first."""
    return [canonical_name(c) for c in cls.__mro__ if isinstance(c, type) and issubclass(c, nn.Module)
            and c is not nn.Module]


def type_keys_converter(name: str):
    """attrs converter for a ``{module type: config}`` field: keys become canonical names."""
    def convert(value: dict) -> dict:
        if not isinstance(value, dict):
            raise TypeError(f"{name}: expected a mapping of module type to config, got {value!r}")
        out = {}
        for key, cfg in value.items():
            try:
                out[normalize_module_type(key)] = cfg
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{name}.{key}: {exc}") from None
        return out
    return convert
