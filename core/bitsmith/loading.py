"""Load a compressed model saved by a file export backend: ``bitsmith.load(path, model_factory)``.

The backend that wrote the file reads it back (any registered export backend with a
``suffix`` and a ``load(path, model_factory)`` method, e.g. ``"safetensors"``), so the
core knows no file format. ``model_factory`` builds the *uncompressed* architecture:
a callable, an ``nn.Module`` instance, or a ``"package.module:function"`` string.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from torch import nn

from . import activation_hooks, plugins
from .errors import ConfigError, PluginError
from .export import ExportBackend, backend_name, get_backend
from .protocols import ReadableExportBackend

ModelFactory = Union[Callable[[], nn.Module], nn.Module, str]

_HOOKS = "_bitsmith_activation_hooks"


def import_callable(spec: str, *, field: str = "model") -> Callable[..., Any]:
    """Resolve ``"package.module:function"`` to the function; :class:`ConfigError` names ``field``."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"{field}: expected 'package.module:function', got {spec!r}")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{field}: cannot import module {module_name!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ConfigError(f"{field}: module {module_name!r} has no attribute {attr!r}; "
                              f"callables there: {', '.join(public[:20]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{field}: {spec!r} is not callable")
    return obj


def backend_for_path(path: Union[str, os.PathLike], registry: Optional[plugins.Registry] = None) -> str:
    """The name of the registered backend that reads files with ``path``'s suffix."""
    registry = registry or plugins.default_registry()
    suffix = Path(path).suffix
    readers = {}
    for name in registry.names("export_backend"):
        impl = registry.get("export_backend", name)
        if isinstance(impl, ReadableExportBackend):
            readers[name] = impl.suffix
            if impl.suffix == suffix:
                return name
    known = ", ".join(f"{s} ({n})" for n, s in sorted(readers.items())) or "none installed"
    raise PluginError(f"{path}: no export backend reads {suffix or 'files without a suffix'!r}; "
                      f"readable suffixes: {known}; install bitsmith-export-safetensors for .safetensors")


def load(path: Union[str, os.PathLike], model_factory: ModelFactory, *,
         backend: Union[str, ExportBackend, None] = None, registry: Optional[plugins.Registry] = None) -> nn.Module:
    """Restore a model saved by a file export backend (``backend.save(model, path)``).

    :param path: the file written by the backend (``model.safetensors``).
    :param model_factory: builds the uncompressed architecture: a callable, an
        ``nn.Module`` (filled in place) or a ``"package.module:function"`` string.
    :param backend: the backend name; by default the one whose ``suffix`` matches ``path``.
    :param registry: the plugin registry to find the backend in.
    :returns: the model with the file's weights and compressed-weight records attached,
        in eval mode; its outputs are bit-identical to the model that was saved.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    name = backend_name(backend) if backend is not None else backend_for_path(path, registry)
    impl = get_backend(name, registry)
    if not isinstance(impl, ReadableExportBackend):
        raise PluginError(f"export backend {name!r} writes files but cannot load them")
    factory = import_callable(model_factory, field="model_factory") if isinstance(model_factory, str) else model_factory
    return impl.load(path, factory)


def enable_activation_quant(model: nn.Module) -> int:
    """Make every :class:`~bitsmith.compressed.ActivationQuant` record of ``model`` act in eager PyTorch.

    A record under ``input.i`` fake-quantizes the module's ``i``-th positional input
    (forward pre-hook), one under ``output.i`` its ``i``-th output (forward hook; ``output.0``
    of a module returning one tensor is that tensor), with
    :meth:`~bitsmith.compressed.ActivationQuant.fake_quantize` (:mod:`bitsmith.activation_hooks`).
    Idempotent: calling it again reinstalls the same hooks. Returns the number of modules hooked.
    """
    return activation_hooks.install_all(model, _HOOKS)


def disable_activation_quant(model: nn.Module) -> None:
    """Remove the hooks installed by :func:`enable_activation_quant` (records stay attached)."""
    activation_hooks.remove_all(model, _HOOKS)


__all__ = ["ModelFactory", "backend_for_path", "disable_activation_quant", "enable_activation_quant",
           "import_callable", "load"]
