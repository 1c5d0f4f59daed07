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

import torch
from torch import nn

from . import compressed, plugins
from .compressed import ActivationQuant
from .errors import ConfigError, PluginError
from .export import ExportBackend, backend_name, get_backend

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
        if hasattr(impl, "load") and getattr(impl, "suffix", None):
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
    if not hasattr(impl, "load"):
        raise PluginError(f"export backend {name!r} writes files but cannot load them")
    factory = import_callable(model_factory, field="model_factory") if isinstance(model_factory, str) else model_factory
    return impl.load(path, factory)


def enable_activation_quant(model: nn.Module) -> int:
    """Make every :class:`~bitsmith.compressed.ActivationQuant` record of ``model`` act in eager PyTorch.

    A record under ``input.i`` fake-quantizes the module's ``i``-th positional input
    (forward pre-hook), one under ``output.i`` its ``i``-th output (forward hook; ``output.0``
    of a module returning one tensor is that tensor), with
    :meth:`~bitsmith.compressed.ActivationQuant.fake_quantize`. Idempotent: hooks are
    installed once per module. Returns the number of modules hooked.
    """
    hooked = 0
    for _, module, name, record in compressed.iter_records(model):
        if not isinstance(record, ActivationQuant) or _HOOKS in module.__dict__:
            continue
        acts = {n: r for n, r in compressed.records(module).items() if isinstance(r, ActivationQuant)}
        inputs = {_index(n): n for n in acts if n.startswith("input.")}
        outputs = {_index(n): n for n in acts if n.startswith("output.")}
        handles = []
        if inputs:
            handles.append(module.register_forward_pre_hook(_InputQuant(inputs)))
        if outputs:
            handles.append(module.register_forward_hook(_OutputQuant(outputs)))
        module.__dict__[_HOOKS] = handles
        hooked += 1
    return hooked


def disable_activation_quant(model: nn.Module) -> None:
    """Remove the hooks installed by :func:`enable_activation_quant` (records stay attached)."""
    for module in model.modules():
        for handle in module.__dict__.pop(_HOOKS, []):
            handle.remove()


def _index(name: str) -> int:
    kind, _, idx = name.partition(".")
    if not idx.isdigit():
        raise ValueError(f"activation record name {name!r}: expected '{kind}.<index>'")
    return int(idx)


class _InputQuant:
    def __init__(self, names: dict[int, str]):
        self.names = names

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        recs = compressed.records(module)
        return tuple(recs[self.names[i]].fake_quantize(a) if i in self.names and isinstance(a, torch.Tensor) else a
                     for i, a in enumerate(args))


class _OutputQuant:
    def __init__(self, names: dict[int, str]):
        self.names = names

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        recs = compressed.records(module)
        if isinstance(output, torch.Tensor):
            return recs[self.names[0]].fake_quantize(output) if 0 in self.names else output
        if isinstance(output, (tuple, list)):
            return type(output)(recs[self.names[i]].fake_quantize(o) if i in self.names and isinstance(
                o, torch.Tensor) else o for i, o in enumerate(output))
        return output


__all__ = ["ModelFactory", "backend_for_path", "disable_activation_quant", "enable_activation_quant",
           "import_callable", "load"]
