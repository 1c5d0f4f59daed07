"""``save_pretrained`` / ``from_pretrained`` for compressed transformers models.

A directory written by :func:`save_pretrained` holds:

- ``config.json``: the model's transformers config plus a ``quantization_config``
  entry (``quant_method: bitsmith``, the format version, the weights file and one
  line per compressed tensor: its record kind and spec);
- :data:`WEIGHTS_NAME`: safetensors with the model's state dict in compressed form:
  every compressed tensor as its record entries (:mod:`bitsmith.state`, indices
  bit-packed as ``<tensor>_bitsmith_packed_indices``) instead of its dense values,
  every other tensor as is. Tensors shared by several names (tied embeddings) are
  stored once; the header metadata ``bitsmith_aliases`` maps the other names to it.

:func:`from_pretrained` builds the model from ``config.json`` (a transformers model
class, or any factory taking the config dict) and loads the file through
:func:`bitsmith.state.load_state_dict`: records and dense values come back
bit-identical. Plain ``transformers.AutoModel.from_pretrained`` does not load such a
directory: it warns that it does not know ``quant_method: bitsmith`` and stops
because the folder has no ``model.safetensors`` (on purpose: a dense loader would
otherwise initialize the compressed weights at random).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Union

import torch
from torch import nn

from . import atomic, compressed, state
from .errors import BitsmithError
from .safetensors_writer import PendingTensor, write_file

WEIGHTS_NAME = "bitsmith_model.safetensors"
"""The weights file of a bitsmith directory (deliberately not ``model.safetensors``)."""

CONFIG_NAME = "config.json"
"""The transformers config file, with the ``quantization_config`` entry."""

QUANT_METHOD = "bitsmith"
"""``quantization_config.quant_method`` of a bitsmith directory."""

FORMAT_VERSION = 1
"""Version of the directory layout (``quantization_config.format_version``)."""


def _packed(state_dict: dict[str, torch.Tensor]) -> dict[str, Union[torch.Tensor, PendingTensor]]:
    """Drop dense values of compressed tensors; palettized indices become bit-packed :class:`PendingTensor` s.

    The packing itself happens while the file is written, one tensor at a time, so the
    packed copy of the whole model never sits in memory at once.
    """
    from .packing import pack_bits, packed_nbytes

    out: dict[str, Union[torch.Tensor, PendingTensor]] = dict(state_dict)
    packed: dict[tuple, PendingTensor] = {}  # a tied weight's indices are packed (and stored) once
    for key in [k for k in state_dict if k.endswith(state.MARKER + "spec")]:
        base = key[:-len("spec")]
        prefix = key[:key.rfind(".") + 1] if "." in key else ""
        meta = state.read_spec(state_dict[key], key)
        if meta["kind"] != "activation":
            out.pop(prefix + meta["name"], None)
        if meta["kind"] == "palettized":
            indices = state_dict[base + "indices"]
            out.pop(base + "indices")
            n_bits = int(meta["spec"]["n_bits"])
            ident = (indices.untyped_storage().data_ptr(), indices.storage_offset(), tuple(indices.shape))
            if ident not in packed:
                packed[ident] = PendingTensor(torch.uint8, (packed_nbytes(indices.numel(), n_bits),),
                                              functools.partial(pack_bits, indices, n_bits))
            out[base + "packed_indices"] = packed[ident]
    return out


def _dedupe(tensors: dict[str, Union[torch.Tensor, PendingTensor]]
            ) -> tuple[dict[str, Union[torch.Tensor, PendingTensor]], dict[str, str]]:
    """Store each shared tensor once: ``(tensors, {alias: stored name})``; partial overlaps are copied."""
    stored: dict[str, Union[torch.Tensor, PendingTensor]] = {}
    aliases: dict[str, str] = {}
    exact: dict[tuple, str] = {}
    storages: set[int] = set()
    pending: dict[int, str] = {}
    for name, t in tensors.items():
        if isinstance(t, PendingTensor):  # the same pending object under two names: a tied weight
            if id(t) in pending:
                aliases[name] = pending[id(t)]
            else:
                pending[id(t)] = name
                stored[name] = t
            continue
        t = t.detach().cpu()
        if t.numel() == 0:
            stored[name] = t.contiguous()
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ident in exact:
            aliases[name] = exact[ident]
            continue
        ptr = t.untyped_storage().data_ptr()
        t = t.clone() if ptr in storages or not t.is_contiguous() else t
        storages.add(t.untyped_storage().data_ptr())
        exact[ident] = name
        stored[name] = t
    return stored, aliases


def _quantization_config(model: nn.Module) -> dict[str, Any]:
    from . import __version__

    records = {}
    for module_name, _, name, record in compressed.iter_records(model):
        spec = record.spec
        label = spec.describe() if hasattr(spec, "describe") else f"{spec.dtype_name} {type(spec.granularity).__name__}"
        records[f"{module_name}.{name}" if module_name else name] = f"{type(record).__name__}: {label}"
    return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "bitsmith_version": __version__,
            "weights": WEIGHTS_NAME, "records": records,
            "load_with": "bitsmith.from_pretrained(directory, ModelClass); plain transformers cannot read "
                         f"{WEIGHTS_NAME} (compressed tensors, no dense copy)"}


def save_pretrained(model: nn.Module, directory: Union[str, os.PathLike], *, overwrite: bool = False) -> Path:
    """Write a compressed transformers ``model`` to ``directory`` (``config.json`` + :data:`WEIGHTS_NAME`).

    Both files are written atomically; existing ones are replaced only with
    ``overwrite=True`` (checked before anything is written). Returns the folder.
    """
    to_json = getattr(getattr(model, "config", None), "to_json_string", None)
    if not isinstance(model, nn.Module) or not callable(to_json):
        raise TypeError(f"model: save_pretrained needs a transformers model (a .config with to_json_string()), got "
                        f"{type(model).__name__}; for other models use torch.save(model.state_dict()) and "
                        "bitsmith.load_state_dict")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        atomic.check_can_write(folder / name, overwrite=overwrite)
    tensors, aliases = _dedupe(_packed(model.state_dict()))
    metadata = {"format": "pt", "bitsmith_format_version": str(FORMAT_VERSION),
                "bitsmith_aliases": json.dumps(aliases, sort_keys=True)}
    config_dict = json.loads(to_json(use_diff=False))
    config_dict["quantization_config"] = _quantization_config(model)
    with atomic.temp_path(folder / WEIGHTS_NAME, overwrite=overwrite) as tmp:  # indices packed one tensor at a time
        write_file(tensors, tmp, metadata)
    atomic.write_text(folder / CONFIG_NAME, json.dumps(config_dict, indent=2, sort_keys=True) + "\n",
                      overwrite=overwrite)
    return folder


def read_config(directory: Union[str, os.PathLike]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model config dict, quantization_config)`` of a bitsmith directory, with clear errors."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG_NAME}; not a directory written by bitsmith.save_pretrained")
    config = json.loads(path.read_text())
    quant = config.pop("quantization_config", None)
    if not isinstance(quant, dict) or quant.get("quant_method") != QUANT_METHOD:
        raise BitsmithError(f"{path}: quantization_config.quant_method is "
                            f"{quant.get('quant_method') if isinstance(quant, dict) else None!r}, not {QUANT_METHOD!r}; "
                            "not a directory written by bitsmith.save_pretrained")
    if quant.get("format_version") != FORMAT_VERSION:
        raise BitsmithError(f"{path}: quantization_config.format_version {quant.get('format_version')!r} is not "
                            f"{FORMAT_VERSION}; this bitsmith cannot read it")
    return config, quant


def from_pretrained(directory: Union[str, os.PathLike], model: Union[type, Callable[[dict], nn.Module]]) -> nn.Module:
    """Load a directory written by :func:`save_pretrained`; records and outputs bit-identical to the saved model.

    :param model: a transformers model class (built from ``config.json`` through its
        ``config_class``) or a factory called with the config dict (without
        ``quantization_config``) that returns the uncompressed architecture.
    :returns: the model in eval mode with its compressed records attached.
    """
    from safetensors.torch import load_file

    config, quant = read_config(directory)
    config_class = getattr(model, "config_class", None)
    if isinstance(model, type) and config_class is not None:
        instance = model(config_class.from_dict(config))
    elif callable(model):
        instance = model(config)
    else:
        raise TypeError(f"model: expected a transformers model class or a factory, got {model!r}")
    if not isinstance(instance, nn.Module):
        raise TypeError(f"model: the factory returned a {type(instance).__name__}, not a torch.nn.Module")
    path = Path(directory) / quant.get("weights", WEIGHTS_NAME)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the weights file named by {CONFIG_NAME} is missing")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get("bitsmith_aliases", "{}"))
    tensors = load_file(str(path))
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    state.load_state_dict(instance, tensors, strict=True)
    return instance.eval()


__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "QUANT_METHOD", "WEIGHTS_NAME", "from_pretrained", "read_config",
           "save_pretrained"]
