"""The ``"onnx"`` backend object registered with the ``export_backend`` hook."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from bitsmith import activation_hooks, atomic, compressed, export
from bitsmith.compressed import ActivationQuant, PalettizedTensor, QuantizedTensor
from bitsmith.errors import CompressionError
from bitsmith.loading import disable_activation_quant

from . import graph, markers

_STATE = "_bitsmith_onnx_records"
_HOOKS = "_bitsmith_onnx_hooks"

BASE_OPSET = 17
"""Opset used when no compressed tensor needs a newer one."""

MAX_EXPORT_OPSET = 20
"""Highest opset torch's TorchScript exporter emits; graphs needing 21 (int4, blocked) are raised to it after export."""


class OnnxBackend:
    """Export a compressed model to ONNX with its weights kept compressed in the file.

    ``finalize(model)`` tags every compressed weight (a parametrization that is the
    identity in eager PyTorch) and turns activation records into QuantizeLinear /
    DequantizeLinear pairs; the result runs in eager PyTorch with the same outputs.
    ``save(model, path, example_inputs=...)`` exports it with ``torch.onnx.export``
    (TorchScript exporter) and replaces each tagged weight by its packed indices +
    LUT + ``Gather`` subgraph, or integer data + ``DequantizeLinear``
    (:mod:`bitsmith_export_onnx.graph`). It reads only the records, so every algorithm
    exports the same way.

    :param opset: ONNX opset; ``None`` picks the lowest that the records need
        (17; 19 for float8; 21 for int4 or blocked scales).
    :param compact: give intermediate values short names and drop node names
        (:func:`bitsmith_export_onnx.graph.compact`), so the file stays within a few
        percent of :func:`bitsmith.sizes.model_size`; ``False`` keeps the exporter's names.
    """

    description = "ONNX graph: packed LUT indices + Gather, INT8 weights/activations via QuantizeLinear/DequantizeLinear"
    suffix = ".onnx"

    def __init__(self, opset: Optional[int] = None, compact: bool = True):
        self.opset = opset
        self.compact = compact

    # ------------------------------------------------------------------ finalize

    def finalize(self, model: nn.Module) -> nn.Module:
        """Tag compressed weights and activations of ``model`` in place for export; returns ``model``."""
        if _STATE in model.__dict__:
            return model
        disable_activation_quant(model)
        export.restore_dense(model)  # tensors another backend converted (seed 002: finalize(CoreAI), then quantize)
        records: dict[str, Union[PalettizedTensor, QuantizedTensor]] = {}
        keys: dict[int, str] = {}
        targets = []
        for module_name, module, name, record in compressed.iter_records(model):
            qualified = f"{module_name}.{name}" if module_name else name
            if isinstance(record, ActivationQuant):
                markers.check_activation(record, qualified)
                continue
            if not isinstance(record, (PalettizedTensor, QuantizedTensor)):
                raise CompressionError(f"{qualified}: the ONNX backend cannot export a {type(record).__name__}")
            if isinstance(record, PalettizedTensor) and record.dtype != torch.float32:
                raise CompressionError(f"{qualified}: the ONNX backend exports palettized float32 weights; this one "
                                       f"is {record.dtype} (convert the model with .float() before compressing)")
            key = keys.setdefault(id(record), qualified)
            records[key] = record
            targets.append((module, name, key))
        for module, name, key in targets:
            if parametrize.is_parametrized(module, name):
                continue
            if not isinstance(getattr(module, name, None), nn.Parameter):
                raise CompressionError(f"{key}: compressed tensor {name!r} is not a parameter of its module")
            parametrize.register_parametrization(module, name, markers.WeightMarker(key), unsafe=True)
        activation_hooks.install_all(model, _HOOKS, markers.step)
        model.__dict__[_STATE] = records
        return model

    # ------------------------------------------------------------------ save

    def save(self, model: nn.Module, path: Union[str, Path], *, example_inputs: Any = None,
             input_names: Optional[Sequence[str]] = None, output_names: Optional[Sequence[str]] = None,
             dynamic_batch: bool = False, overwrite: bool = False) -> Path:
        """Export ``model`` to ``path`` (``.onnx``); ``example_inputs`` (a tensor or tuple) is required.

        A model not yet finalized is finalized on a deep copy first. ``dynamic_batch``
        marks dim 0 of every input and output as dynamic. The file is written beside
        ``path`` and renamed; an existing file is replaced only with ``overwrite=True``
        (checked before the export starts). Returns the path.
        """
        import onnx

        atomic.check_can_write(path, overwrite=overwrite)
        onnx_model = self.to_onnx(model, example_inputs, input_names=input_names, output_names=output_names,
                                  dynamic_batch=dynamic_batch)
        with atomic.temp_path(path, overwrite=overwrite) as tmp:
            onnx.save(onnx_model, str(tmp))
        return Path(path)

    def to_onnx(self, model: nn.Module, example_inputs: Any, *, input_names: Optional[Sequence[str]] = None,
                output_names: Optional[Sequence[str]] = None, dynamic_batch: bool = False) -> Any:
        """The exported ``onnx.ModelProto`` (checked with ``onnx.checker``)."""
        import onnx

        if example_inputs is None:
            raise ValueError("example_inputs: the ONNX backend traces the model and needs example inputs "
                             "(a tensor or a tuple of tensors)")
        args = example_inputs if isinstance(example_inputs, tuple) else (
            tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,))
        if _STATE not in model.__dict__:
            model = self.finalize(copy.deepcopy(model))
        records = model.__dict__[_STATE]
        needed = max([graph.required_opset(r) for r in records.values()] + [BASE_OPSET])
        target = max(self.opset or 0, needed)
        export_opset = min(target, MAX_EXPORT_OPSET)
        with torch.no_grad():
            outputs = model.eval()(*args)
        n_out = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        input_names = list(input_names or [f"input_{i}" for i in range(len(args))])
        output_names = list(output_names or (["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))
        dynamic_axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, buffer, dynamo=False, opset_version=export_opset,
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
        proto = onnx.load_from_string(buffer.getvalue())
        graph.replace_placeholders(proto, records)
        if self.compact:
            graph.compact(proto)
        if target > export_opset:
            _raise_opset(proto, target)
        onnx.checker.check_model(proto)
        return proto


def _raise_opset(proto: Any, version: int) -> None:
    changed = {"GroupNormalization"}  # ops whose semantics changed between opset 20 and 21
    found = sorted({n.op_type for n in proto.graph.node if n.op_type in changed})
    if found:
        raise CompressionError(f"this model needs opset {version} (int4 or blocked weights) but uses {', '.join(found)}, "
                               "whose meaning changed in that opset; use per-channel INT8 weights")
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = version
