"""The model side of the sensitivity stage: which layers, which inputs, which output tensor.

- Layers: the palettizable modules in ``named_modules()`` order
  (:func:`bitsmith.resolve.palettizable_modules`), one compressible tensor each
  (``weight``; ``in_proj_weight`` for ``MultiheadAttention``); a tensor shared by
  several modules is listed once, under its first owner.
- Data: one batch (a tensor, a tuple of positional tensors, or a dict of keyword
  tensors) or a list/iterable of such batches; each batch is passed to the model as
  ``model(*args, **kwargs)``.
- Outputs: ``output_fn(model_output) -> Tensor`` picks the tensor the metric scores;
  by default a tensor as is, the first element of a tuple/list, or ``logits`` /
  the first value of a mapping (Hugging Face outputs). All batches' outputs are
  concatenated along dimension 0.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from attrs import define
from torch import nn

from ..errors import ConfigError
from ..resolve import palettizable_modules

__all__ = ["Batch", "LayerInfo", "default_output_fn", "find_layers", "hash_data", "hash_weights", "normalize_data",
           "run_batches", "to_device", "weights_device"]

Batch = tuple[tuple[Any, ...], dict[str, Any]]
"""One batch as ``(args, kwargs)``."""


@define(frozen=True)
class LayerInfo:
    """A layer the sensitivity stage compresses: module name, tensor name, shape and dtype name."""

    name: str
    tensor: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        """Number of weights."""
        return math.prod(self.shape)

    @property
    def qualified_name(self) -> str:
        """``module.tensor``."""
        return f"{self.name}.{self.tensor}" if self.name else self.tensor

    @property
    def torch_dtype(self) -> torch.dtype:
        """The tensor's dtype."""
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {"name": self.name, "tensor": self.tensor, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerInfo":
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["name"]), str(data["tensor"]), tuple(int(s) for s in data["shape"]), str(data["dtype"]))


def _tensor_name(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.MultiheadAttention):
        return "in_proj_weight" if module.in_proj_weight is not None else None
    weight = getattr(module, "weight", None)
    return "weight" if isinstance(weight, torch.Tensor) and weight.is_floating_point() else None


def find_layers(model: nn.Module, layers: Union[None, str, Sequence[str]] = None) -> list[LayerInfo]:
    """The layers to score, in ``named_modules()`` order.

    :param layers: ``None`` for every palettizable layer, or names / full-match
        regexes selecting among them; a pattern matching nothing is an error that
        lists some layer names.
    """
    found, seen = [], set()
    for name, module in palettizable_modules(model):
        tensor_name = _tensor_name(module)
        if tensor_name is None:
            continue
        tensor = getattr(module, tensor_name)
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        found.append(LayerInfo(name, tensor_name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")))
    if layers is None:
        return found
    patterns = [layers] if isinstance(layers, str) else list(layers)
    chosen = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"layers: expected layer names or regexes, got {pattern!r}")
        hits = [info for info in found if info.name == pattern or _fullmatch(pattern, info.name)]
        if not hits:
            shown = ", ".join(info.name for info in found[:8]) + (", ..." if len(found) > 8 else "")
            raise ConfigError(f"layers: {pattern!r} matches no palettizable layer of {type(model).__name__}; "
                              f"layers: {shown}")
        chosen += [h for h in hits if h not in chosen]
    return [info for info in found if info in chosen]


def _fullmatch(pattern: str, name: str) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _as_batch(item: Any, where: str) -> Batch:
    if isinstance(item, torch.Tensor):
        return (item,), {}
    if isinstance(item, tuple):
        return tuple(item), {}
    if isinstance(item, Mapping):
        return (), dict(item)
    raise TypeError(f"{where}: expected a tensor, a tuple of model arguments or a dict of keyword arguments, "
                    f"got {type(item).__name__}")


def normalize_data(data: Any) -> list[Batch]:
    """Turn ``data`` (module docstring) into a non-empty list of ``(args, kwargs)`` batches."""
    if data is None:
        raise ConfigError("data: the sensitivity stage needs input data (a tensor batch or a list of batches)")
    if isinstance(data, (torch.Tensor, tuple, Mapping)):
        batches = [_as_batch(data, "data")]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        batches = [_as_batch(item, f"data[{i}]") for i, item in enumerate(data)]
    else:
        raise TypeError(f"data: expected a tensor, a tuple, a dict or a list of batches, got {type(data).__name__}")
    if not batches:
        raise ConfigError("data: no batches")
    return batches


def weights_device(model: nn.Module) -> Optional[torch.device]:
    """The one device holding all of ``model``'s parameters and buffers; ``None`` if none or several."""
    devices = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
    return devices.pop() if len(devices) == 1 else None


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a batch, or anything inside one) with every tensor moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def default_output_fn(output: Any) -> torch.Tensor:
    """The tensor a metric scores: a tensor itself, the first of a tuple/list, ``logits`` or the first mapping value."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        keys = list(output.keys())
        if not keys:
            raise TypeError("output_fn: the model returned an empty mapping")
        return default_output_fn(output["logits"] if "logits" in keys else output[keys[0]])
    if isinstance(output, (tuple, list)) and output:
        return default_output_fn(output[0])
    raise TypeError(f"output_fn: cannot find a tensor in a model output of type {type(output).__name__}; "
                    "pass output_fn=lambda out: ... to pick one")


def score_candidates(module: nn.Module, task: Any, run: Callable[[], torch.Tensor],
                     score: Callable[[torch.Tensor], float], record: Callable[[int, int, float, float], None]) -> None:
    """Put each of ``task``'s candidate records into ``module``'s tensor in turn, ``run``, ``score`` and ``record`` it.

    ``task`` is an ``EvalTask`` (``tensor``, ``layer_index``, ``candidates`` of
    ``(candidate index, record)``); ``record(layer, candidate, score, seconds)``. The
    tensor's original values are restored afterwards, also on error. Every engine
    (naive, block replay, local) scores through this one loop.
    """
    param = getattr(module, task.tensor)
    original = param.data
    try:
        for ci, rec in task.candidates:
            start = time.perf_counter()
            param.data = rec.dequantize().to(device=original.device, dtype=original.dtype)
            record(task.layer_index, ci, score(run()), time.perf_counter() - start)
    finally:
        param.data = original


def run_batches(model: nn.Module, batches: Sequence[Batch], output_fn: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """Run every batch through ``model`` (no grad) and concatenate the picked outputs (float32, CPU)."""
    outs = []
    with torch.inference_mode():
        for args, kwargs in batches:
            outs.append(_pick(output_fn, model(*args, **kwargs)))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _pick(output_fn: Callable[[Any], torch.Tensor], output: Any) -> torch.Tensor:
    tensor = output_fn(output)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"output_fn returned {type(tensor).__name__}, expected a tensor")
    tensor = tensor.detach().to("cpu", torch.float32)
    return tensor if tensor.dim() else tensor.reshape(1)


def _update(h: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    elif isinstance(value, (tuple, list)):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _update(h, v)
    elif isinstance(value, Mapping):
        h.update(f"D{len(value)}".encode())
        for k in sorted(value, key=str):
            h.update(repr(k).encode())
            _update(h, value[k])
    else:
        h.update(repr(value).encode())


def hash_data(batches: Sequence[Batch]) -> str:
    """Digest of every input tensor (and non-tensor argument) of every batch."""
    h = hashlib.sha256()
    _update(h, [[args, kwargs] for args, kwargs in batches])
    return h.hexdigest()


def hash_weights(model: nn.Module) -> str:
    """Digest of the model's class and every parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in model.state_dict(keep_vars=False).items():
        h.update(name.encode())
        _update(h, tensor)
    return h.hexdigest()
