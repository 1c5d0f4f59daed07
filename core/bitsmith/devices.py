"""Checking a ``device=`` argument before any work: one rule and one wording for every algorithm.

Algorithms that place work on a device (the Fisher of Sensitive K-Means, DKM's
training-time clustering) take ``device=`` as a string (``"cpu"``, ``"cuda"``,
``"cuda:1"``) or a :class:`torch.device`; ``None`` means "where the model's weights
are". :func:`resolve_device` turns the argument into a :class:`torch.device` or fails
with a :class:`~bitsmith.errors.ConfigError` that names the option and the value,
e.g. ``device: 'cuda' asked for, but torch.cuda.is_available() is False``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .errors import ConfigError

__all__ = ["DeviceLike", "resolve_device", "same_device"]

DeviceLike = Union[None, str, torch.device]
"""What a ``device=`` argument accepts."""


def resolve_device(device: DeviceLike, option: str = "device") -> Optional[torch.device]:
    """``device`` as a usable :class:`torch.device` (``None`` stays ``None``); a clear error otherwise.

    Refused, naming ``option`` and the value: anything torch does not parse as a
    device, ``cuda`` when CUDA is not available or the index is past the last GPU,
    ``meta`` (holds no values to compute with), and any other device type this torch
    build cannot allocate on.
    """
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        raise ConfigError(f"{option}: expected a device name such as 'cpu' or 'cuda', or a torch.device; "
                          f"got {device!r}")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{option}: {device!r} is not a torch device ({exc})") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option}: {device!r} asked for, but torch.cuda.is_available() is False")
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise ConfigError(f"{option}: {device!r} asked for, but only {torch.cuda.device_count()} CUDA "
                              f"device(s) exist (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return target
    if target.type == "meta":
        raise ConfigError(f"{option}: 'meta' tensors hold no values to compute with; use 'cpu' or 'cuda'")
    if target.type != "cpu":
        try:
            torch.empty(0, device=target)
        except (RuntimeError, AssertionError) as exc:
            reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{option}: {device!r} is not usable in this torch build ({reason})") from None
    return target


def same_device(home: Optional[torch.device], target: torch.device) -> bool:
    """True when tensors on ``home`` are already on ``target`` (``"cuda"`` without an index matches any GPU)."""
    if home is None or home.type != target.type:
        return False
    return target.index is None or home.type == "cpu" or home.index == target.index
