"""Per-scope algorithm names and options in palettization configs, checked against the plugin registry.

A ``ModuleKMeansPalettizerConfig`` may name the registered palettizer that compresses
its scope (``algorithm: sensitive_kmeans``) and that palettizer's own options
(``options: {outlier_fraction: 0.01}``). The palettizer class says what its options
are through its ``config_class`` (:attr:`KMeansPalettizerConfig.options_field`), so
plugins contribute option classes through the registry and a fresh process validates
them: looking the name up loads the plugins.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, Optional

from ..errors import ConfigError, PluginError


def palettizer_class(name: str, registry: Any = None) -> Any:
    """The palettizer class registered as ``name``; ``ValueError`` (``algorithm: ...``) lists the names that exist."""
    from .. import plugins

    registry = registry or plugins.default_registry()
    try:
        return registry.get("palettizer", name)
    except PluginError as exc:
        known = registry.names("palettizer")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        detail = "; ".join(str(exc).splitlines()[1:])
        raise ValueError(f"algorithm: {name!r} is not a registered palettizer{hint}; registered: "
                         f"{', '.join(known) or 'none'}" + (f"; {detail}" if detail else "")) from None


def check_name(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator of ``algorithm``: ``None`` or the name of a registered palettizer."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise TypeError(f"algorithm: expected the name of a registered palettizer or None, got {value!r}")
    palettizer_class(value)


def options_class(algorithm: str, registry: Any = None) -> Optional[type]:
    """The attrs class of ``algorithm``'s options (from its ``config_class``), ``None`` when it has none."""
    from ..protocols import config_class_of
    from .palettization import KMeansPalettizerConfig

    return config_class_of(palettizer_class(algorithm, registry), KMeansPalettizerConfig).options_class()


def build_options(algorithm: Optional[str], options: Any, registry: Any = None) -> Any:
    """``options`` as an instance of ``algorithm``'s options class (a mapping is structured into it).

    ``None`` stays ``None`` (the algorithm's defaults). Errors are
    :class:`ConfigError` lines starting with ``options``.
    """
    if options is None:
        return None
    if algorithm is None:
        raise ValueError(f"options: given without an algorithm (options belong to a named algorithm), got {options!r}")
    cls = options_class(algorithm, registry)
    if cls is None:
        raise ValueError(f"options: palettizer {algorithm!r} takes no options, got {options!r}")
    if isinstance(options, cls):
        return options
    if not isinstance(options, Mapping):
        raise TypeError(f"options: expected a {cls.__name__} or a mapping of its fields, got {options!r}")
    from .converter import from_dict

    try:
        return from_dict(dict(options), cls)
    except ConfigError as exc:
        raise ConfigError([f"options.{line}" for line in exc.lines]) from None
