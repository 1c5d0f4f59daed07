"""Plugin discovery and the registries of named implementations.

A :class:`Registry` owns a pluggy ``PluginManager`` plus one table per registration
hook (``cluster``, ``sensitivity_metric``, ...). Entry points of the ``bitsmith``
group are loaded lazily, on the first lookup, each in its own try block: a plugin
that fails to import, fails pluggy's validation, raises inside a hook, registers an
implementation that does not satisfy its protocol (:func:`bitsmith.protocols.conformance`)
or registers a name that is already taken is rolled back, recorded in :meth:`Registry.plugins`
and warned about once; the core and the other plugins keep working.
``BITSMITH_STRICT_PLUGINS=1`` or ``Registry(strict=True)`` turns such failures into
:class:`~bitsmith.errors.PluginError`.

Embedders create a private ``Registry(autoload=False, plugins=[...])``; scripts and
the CLI use the module-level default through :func:`get`, :func:`names`,
:func:`register` and friends.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
import warnings
from typing import Any, Generic, Iterable, Optional, TypeVar

import pluggy
from attrs import define, field

from . import hookspecs, protocols
from .errors import PluginError

if sys.version_info >= (3, 12):
    from importlib.metadata import EntryPoint, entry_points
else:  # pragma: no cover - exercised on 3.10/3.11
    from importlib_metadata import EntryPoint, entry_points

ENTRY_POINT_GROUP = "bitsmith"
"""The entry-point group plugins declare: ``[project.entry-points.bitsmith]``."""

KNOWN_PROVIDERS: dict[tuple[str, str], str] = {
    ("cluster", "kmeans"): "bitsmith-kmeans",
    ("palettizer", "kmeans"): "bitsmith-kmeans",
    ("cluster", "sensitive_kmeans"): "bitsmith-sensitive-kmeans",
    ("palettizer", "sensitive_kmeans"): "bitsmith-sensitive-kmeans",
    ("cluster", "dkm"): "bitsmith-dkm",
    ("palettizer", "dkm"): "bitsmith-dkm",
    ("quantizer", "int8"): "bitsmith-int8-quant",
    ("observer", "moving_average"): "bitsmith-int8-quant",
    ("observer", "min_max"): "bitsmith-int8-quant",
    ("sensitivity_metric", "psnr"): "bitsmith-metrics",
    ("sensitivity_metric", "kl"): "bitsmith-metrics",
    ("sensitivity_metric", "sqnr"): "bitsmith-metrics",
    ("sensitivity_metric", "mse"): "bitsmith-metrics",
    ("recipe_search", "greedy"): "bitsmith-greedy-recipe",
    ("recipe_search", "optimal"): "bitsmith-optimal-recipe",
    ("export_backend", "coreai"): "bitsmith-export-coreai",
    ("export_backend", "torch"): "bitsmith-export-torch",
    ("export_backend", "safetensors"): "bitsmith-export-safetensors",
    ("export_backend", "onnx"): "bitsmith-export-onnx",
    ("export_backend", "coreml"): "bitsmith-export-coreml",
}
"""Which first-party dist provides a well-known name: used for "pip install ..." hints."""

KIND_LABELS = {
    "cluster": "clusterer",
    "sensitivity_metric": "sensitivity metric",
    "recipe_search": "recipe search",
    "export_backend": "export backend",
    "palettizer": "palettizer",
    "quantizer": "quantizer",
    "observer": "observer",
}


class BitsmithPluginWarning(UserWarning):
    """Warned (once per plugin) when a plugin is skipped because it failed to load."""


@define
class PluginRecord:
    """What the registry knows about one plugin: where it came from and what it registered."""

    name: str
    dist: Optional[str] = None
    version: Optional[str] = None
    source: str = "register"
    registered: dict[str, list[str]] = field(factory=dict)
    error: Optional[str] = None
    traceback: Optional[str] = field(default=None, repr=False)
    plugin: Any = field(default=None, repr=False, eq=False)

    @property
    def ok(self) -> bool:
        """True when the plugin loaded and registered without error."""
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``bitsmith plugins --json``)."""
        return {"name": self.name, "dist": self.dist, "version": self.version, "source": self.source,
                "hooks": {k: list(v) for k, v in self.registered.items()}, "error": self.error}


@define
class _Entry:
    impl: Any
    record: PluginRecord


T = TypeVar("T")


class TypedRegistry(Generic[T]):
    """One hook's table, e.g. ``registry.clusterers``: ``get(name)``, ``names()``, ``in``."""

    def __init__(self, registry: "Registry", kind: str):
        self._registry = registry
        self.kind = kind

    def get(self, name: str) -> T:
        """The implementation registered as ``name``; :class:`PluginError` lists the alternatives."""
        return self._registry.get(self.kind, name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return self._registry.names(self.kind)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __repr__(self) -> str:
        return f"<{KIND_LABELS[self.kind]}s: {', '.join(self.names()) or 'none'}>"


class Registry:
    """Plugin manager plus name -> implementation tables, one per hook.

    :param autoload: load the ``bitsmith`` entry-point group on first use (default:
        yes, unless ``BITSMITH_DISABLE_PLUGIN_AUTOLOAD=1``).
    :param strict: raise on any plugin failure (default: ``BITSMITH_STRICT_PLUGINS``).
    :param plugins: plugin objects (modules or instances with ``@hookimpl``
        functions) to register up front.
    """

    def __init__(self, *, autoload: Optional[bool] = None, strict: Optional[bool] = None, plugins: Iterable[Any] = ()):
        if autoload is None:
            autoload = os.environ.get("BITSMITH_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
        self.autoload = autoload
        self.strict = os.environ.get("BITSMITH_STRICT_PLUGINS", "") not in ("", "0") if strict is None else strict
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._tables: dict[str, dict[str, _Entry]] = {kind: {} for kind in hookspecs.HOOK_NAMES}
        self._records: list[PluginRecord] = []
        self._loaded = not autoload
        self._lock = threading.RLock()
        self.clusterers: TypedRegistry = TypedRegistry(self, "cluster")
        self.metrics: TypedRegistry = TypedRegistry(self, "sensitivity_metric")
        self.searches: TypedRegistry = TypedRegistry(self, "recipe_search")
        self.backends: TypedRegistry = TypedRegistry(self, "export_backend")
        self.palettizers: TypedRegistry = TypedRegistry(self, "palettizer")
        self.quantizers: TypedRegistry = TypedRegistry(self, "quantizer")
        self.observers: TypedRegistry = TypedRegistry(self, "observer")
        for plugin in plugins:
            self.register(plugin)

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Load every entry point of the ``bitsmith`` group once (idempotent)."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (_dist_name(ep) or "", ep.name))
            for ep in eps:
                self._load_entry_point(ep)

    def _load_entry_point(self, ep: EntryPoint) -> PluginRecord:
        dist = _dist_name(ep)
        found = getattr(ep, "dist", None)
        version = found.version if found is not None else None
        record = PluginRecord(name=ep.name, dist=dist, version=version, source=f"entry point {ep.value}")
        try:
            plugin = ep.load()
        except BaseException as exc:  # noqa: BLE001 - a plugin must never take the core down
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return self._fail(record, exc)
        return self._register(plugin, record)

    def register(self, plugin: Any, *, name: Optional[str] = None, dist: Optional[str] = None) -> PluginRecord:
        """Register a plugin object (module, class instance) programmatically.

        Failures follow the same rules as entry points: recorded, warned, rolled
        back (raised when strict).
        """
        label = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        record = PluginRecord(name=label, dist=dist, source="register")
        return self._register(plugin, record)

    def _register(self, plugin: Any, record: PluginRecord) -> PluginRecord:
        with self._lock:
            try:
                self._pm.register(plugin, name=f"{record.name}@{id(plugin)}")
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                return self._fail(record, exc)
            staged: dict[str, dict[str, Any]] = {}
            try:
                for kind in hookspecs.HOOK_NAMES:
                    for impl in getattr(self._pm.hook, kind).get_hookimpls():
                        if impl.plugin is plugin:
                            impl.function(register=_Collector(kind, staged.setdefault(kind, {}), record))
                self._check_duplicates(staged, record)
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                self._pm.unregister(plugin)
                return self._fail(record, exc)
            for kind, items in staged.items():
                for key, impl in items.items():
                    self._tables[kind][key] = _Entry(impl, record)
                if items:
                    record.registered[kind] = sorted(items)
            record.plugin = plugin
            self._records.append(record)
            return record

    def _check_duplicates(self, staged: dict[str, dict[str, Any]], record: PluginRecord) -> None:
        for kind, items in staged.items():
            for key in items:
                existing = self._tables[kind].get(key)
                if existing is not None:
                    raise PluginError(
                        f"{KIND_LABELS[kind]} {key!r} is already registered by {_describe(existing.record)}; "
                        f"{_describe(record)} registers it too"
                    )

    def _fail(self, record: PluginRecord, exc: BaseException) -> PluginRecord:
        record.error = f"{type(exc).__name__}: {exc}"
        record.traceback = "".join(traceback.format_exception(exc))
        self._records.append(record)
        if self.strict:
            raise PluginError(f"plugin {_describe(record)} failed to load: {record.error}") from exc
        warnings.warn(f"bitsmith: skipping plugin {_describe(record)}: {record.error}",
                      BitsmithPluginWarning, stacklevel=3)
        return record

    def unregister(self, plugin: Any) -> None:
        """Remove a plugin and every implementation it registered."""
        with self._lock:
            for record in list(self._records):
                if record.plugin is plugin:
                    self._records.remove(record)
                    for kind, keys in record.registered.items():
                        for key in keys:
                            self._tables[kind].pop(key, None)
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)

    # ------------------------------------------------------------------ lookup

    def get(self, kind: str, name: str) -> Any:
        """The implementation of hook ``kind`` registered as ``name``.

        Raises :class:`PluginError` listing the registered names, any plugin that
        failed to load, and the dist to install for well-known names.
        """
        if kind not in self._tables:
            raise PluginError(f"unknown hook {kind!r}; hooks: {', '.join(hookspecs.HOOK_NAMES)}")
        self.load()
        entry = self._tables[kind].get(name)
        if entry is not None:
            return entry.impl
        label = KIND_LABELS[kind]
        available = ", ".join(sorted(self._tables[kind])) or "none"
        lines = [f"no {label} named {name!r}; available: {available}"]
        failed = [r for r in self._records if r.error]
        suspects = [r for r in failed if r.name == name or (r.dist and name.replace("_", "-") in r.dist)]
        for record in suspects or failed:
            lines.append(f"plugin {_describe(record)} failed to load: {record.error}")
        provider = KNOWN_PROVIDERS.get((kind, name))
        if provider and not suspects:
            lines.append(f"install it with: pip install {provider}")
        raise PluginError("\n".join(lines))

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for hook ``kind``."""
        self.load()
        return sorted(self._tables[kind])

    def provider(self, kind: str, name: str) -> PluginRecord:
        """The record of the plugin that registered ``name`` for ``kind``."""
        self.get(kind, name)
        return self._tables[kind][name].record

    def plugins(self) -> list[PluginRecord]:
        """Every plugin seen, loaded or failed, in load order."""
        self.load()
        return list(self._records)


class _Collector:
    """The ``register`` callable handed to a hook implementation."""

    def __init__(self, kind: str, items: dict[str, Any], record: PluginRecord):
        self._kind, self._items, self._record = kind, items, record

    def __call__(self, name: str, implementation: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{self._kind}: register() needs a non-empty string name, got {name!r}")
        if implementation is None:
            raise PluginError(f"{self._kind}: register({name!r}, None): implementation is None")
        if name in self._items:
            raise PluginError(f"{KIND_LABELS[self._kind]} {name!r} registered twice by {_describe(self._record)}")
        problems = protocols.conformance(self._kind, implementation)
        if problems:
            raise PluginError(f"{KIND_LABELS[self._kind]} {name!r} of plugin {_describe(self._record)} does not "
                              f"satisfy bitsmith.protocols.{protocols.PROTOCOLS[self._kind].__name__}: "
                              + "; ".join(problems))
        self._items[name] = implementation


def _dist_name(ep: EntryPoint) -> Optional[str]:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _describe(record: PluginRecord) -> str:
    if record.dist:
        version = f" {record.version}" if record.version else ""
        return f"{record.name!r} (dist {record.dist}{version})"
    return repr(record.name)


# ---------------------------------------------------------------------- module default

_default: Optional[Registry] = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry used by the CLI and module-level helpers (created lazily)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def set_default_registry(registry: Optional[Registry]) -> Optional[Registry]:
    """Swap the default registry (tests, embedders); returns the previous one. ``None`` resets."""
    global _default
    with _default_lock:
        previous, _default = _default, registry
        return previous


def register(plugin: Any, *, name: Optional[str] = None) -> PluginRecord:
    """Register a plugin object with the default registry."""
    return default_registry().register(plugin, name=name)


def unregister(plugin: Any) -> None:
    """Remove a plugin from the default registry."""
    default_registry().unregister(plugin)


def get(kind: str, name: str) -> Any:
    """Look up ``name`` in hook ``kind`` of the default registry."""
    return default_registry().get(kind, name)


def names(kind: str) -> list[str]:
    """Names registered for hook ``kind`` in the default registry."""
    return default_registry().names(kind)


def plugins() -> list[PluginRecord]:
    """Every plugin the default registry has seen."""
    return default_registry().plugins()
