"""The ``"coreml"`` backend: records -> coremltools compression metadata -> mlprogram.

coremltools' PyTorch frontend reads per-parameter compression metadata from buffers
named ``_COREML_/<param>/<field>`` (the format ``coremltools.optimize.torch`` writes):
``compression_type`` (2 palettization, 3 quantization; both for a quantized LUT),
``lut`` (rank of the weight + 2: one LUT per group along the grouped axis, then
``(2**n_bits, cluster_dim)``), ``palettization_scale``, ``vector_axis``,
``quantization_n_bits``, ``quantization_scale``, ``zero_point``. :meth:`CoreMLBackend.finalize`
writes those buffers from the records, so the converter emits ``constexpr_lut_to_dense`` /
``constexpr_blockwise_shift_scale`` ops instead of dense constants. Activation records
become ``torch.quantize_per_tensor`` + ``dequantize`` while tracing (MIL ``quantize`` /
``dequantize``) and :meth:`~bitsmith.compressed.ActivationQuant.fake_quantize` in eager mode.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from bitsmith import activation_hooks, atomic, compressed, export
from bitsmith.compressed import ActivationQuant, PalettizedTensor, QuantizedTensor
from bitsmith.errors import CompressionError, PluginError
from bitsmith.loading import disable_activation_quant

_STATE = "_bitsmith_coreml"
_HOOKS = "_bitsmith_coreml_hooks"
_QDTYPES = {"int8": torch.qint8, "uint8": torch.quint8}
PREFIX = "_COREML_"
PALETTIZATION, QUANTIZATION = 2, 3


class CoreMLSkipWarning(UserWarning):
    """A compressed tensor that Core ML cannot express was converted as a dense constant instead."""


def require_coremltools() -> Any:
    """Import coremltools or raise :class:`PluginError` saying how to install it."""
    try:
        import coremltools
    except ImportError as exc:
        raise PluginError("the coreml backend needs coremltools: pip install 'bitsmith-export-coreml[coremltools]' "
                          f"(coremltools>=8.0); import failed: {exc}") from None
    return coremltools


class CoreMLBackend:
    """Convert a compressed model to a Core ML ``mlprogram`` with its weights kept compressed.

    ``finalize(model)`` attaches coremltools compression metadata for every record and
    installs activation quantization (eager: fake-quant, tracing: quantize/dequantize);
    the result runs in eager PyTorch. ``save(model, path, example_inputs=...)`` traces it,
    converts with ``coremltools.convert`` (iOS18 target, fp16 compute) and writes an
    ``.mlpackage``. Sparse outliers and float8 weights have no Core ML form: ``finalize``
    refuses them, naming the layer, unless ``dense_fallback=True``, which keeps those
    tensors dense with a :class:`CoreMLSkipWarning`.
    """

    description = "Core ML mlprogram via coremltools: constexpr_lut_to_dense / constexpr_blockwise_shift_scale weights"
    suffix = ".mlpackage"

    def __init__(self, minimum_deployment_target: str = "iOS18", compute_precision: str = "float16",
                 dense_fallback: bool = False):
        self.minimum_deployment_target = minimum_deployment_target
        self.compute_precision = compute_precision
        self.dense_fallback = dense_fallback

    # ------------------------------------------------------------------ finalize

    def finalize(self, model: nn.Module) -> nn.Module:
        """Attach compression metadata buffers and activation quantization in place; returns ``model``."""
        if _STATE in model.__dict__:
            return model
        disable_activation_quant(model)
        export.restore_dense(model)  # tensors another backend converted (seed 002: finalize(CoreAI), then quantize)
        seen: set[int] = set()
        pending = []  # every record is checked before the model changes
        for module_name, module, name, record in compressed.iter_records(model):
            qualified = f"{module_name}.{name}" if module_name else name
            if isinstance(record, ActivationQuant):
                if record.spec.dtype_name not in _QDTYPES or record.scale.numel() != 1:
                    raise CompressionError(f"{qualified}: Core ML activation quantization is per-tensor int8/uint8; "
                                           f"this record is {record.spec.dtype_name} with {record.scale.numel()} "
                                           "scales")
                continue
            if id(record) in seen:
                continue
            seen.add(id(record))
            pending.append((module, name, metadata(record, qualified, dense_fallback=self.dense_fallback)))
        for module, name, buffers in pending:
            for key, value in (buffers or {}).items():
                module.register_buffer(f"{PREFIX}/{name}/{key}", value)
        activation_hooks.install_all(model, _HOOKS, _step)
        model.__dict__[_STATE] = True
        return model

    # ------------------------------------------------------------------ convert / save

    def convert(self, model: nn.Module, example_inputs: Any) -> Any:
        """The ``coremltools.models.MLModel`` (not loaded: prediction needs macOS)."""
        ct = require_coremltools()
        if example_inputs is None:
            raise ValueError("example_inputs: the coreml backend traces the model and needs example inputs "
                             "(a tensor or a tuple of tensors)")
        args = example_inputs if isinstance(example_inputs, tuple) else (
            tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,))
        if _STATE not in model.__dict__:
            model = self.finalize(copy.deepcopy(model))
        model = model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, args, check_trace=False)
            target = getattr(ct.target, self.minimum_deployment_target)
            precision = ct.precision.FLOAT16 if self.compute_precision == "float16" else ct.precision.FLOAT32
            return ct.convert(traced, inputs=[ct.TensorType(name=f"input_{i}", shape=tuple(a.shape))
                                              for i, a in enumerate(args)],
                              convert_to="mlprogram", minimum_deployment_target=target,
                              compute_precision=precision, skip_model_load=True)

    def save(self, model: nn.Module, path: Union[str, Path], *, example_inputs: Any = None,
             overwrite: bool = False) -> Path:
        """Convert and write an ``.mlpackage`` directory at ``path``; returns the path.

        The package is written beside ``path`` and renamed into place; an existing one is
        replaced only with ``overwrite=True`` (checked before the conversion starts).
        """
        path = Path(path)
        if path.suffix != self.suffix:
            path = path.with_suffix(self.suffix)
        atomic.check_can_write(path, overwrite=overwrite)
        mlmodel = self.convert(model, example_inputs)
        with atomic.temp_path(path, overwrite=overwrite) as tmp:
            mlmodel.save(str(tmp))
        return path


def weight_file(package: Union[str, Path]) -> Path:
    """The weight blob of an ``.mlpackage`` (``Data/com.apple.CoreML/weights/weight.bin``)."""
    return Path(package) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"


def metadata(record: Union[PalettizedTensor, QuantizedTensor], name: str, *,
             dense_fallback: bool = False) -> Optional[dict[str, torch.Tensor]]:
    """coremltools compression-metadata tensors for one weight record (``None``: keep it dense).

    A record Core ML cannot express raises :class:`~bitsmith.errors.CompressionError` naming
    ``name``, or with ``dense_fallback`` returns ``None`` with a :class:`CoreMLSkipWarning`.
    """
    if isinstance(record, PalettizedTensor):
        if record.outliers is not None and record.outliers.nnz:
            return _dense(name, f"Core ML has no dense-and-sparse LUT form for its {record.outliers.nnz} outliers",
                          dense_fallback)
        return _palettized(record)
    if isinstance(record, QuantizedTensor):
        if record.spec.is_float8:
            return _dense(name, "Core ML has no float8 weights", dense_fallback)
        out = {"compression_type": torch.tensor([QUANTIZATION]),
               "quantization_n_bits": torch.tensor(record.spec.n_bits),
               "quantization_scale": record.scale.detach().float().clone()}
        if record.zero_point is not None:
            out["zero_point"] = record.zero_point.detach().float().clone()
        return out
    raise CompressionError(f"{name}: the coreml backend cannot export a {type(record).__name__}")


def _dense(name: str, reason: str, dense_fallback: bool) -> None:
    if not dense_fallback:
        raise CompressionError(f"{name}: {reason}; the coreml backend refuses to store it dense "
                               "(CoreMLBackend(dense_fallback=True) keeps it as a dense constant)")
    warnings.warn(f"{name}: {reason}; kept as a dense constant", CoreMLSkipWarning, stacklevel=4)
    return None


def _palettized(record: PalettizedTensor) -> dict[str, torch.Tensor]:
    rank = len(record.shape)
    groups = [1] * rank
    groups[record.axis] = record.num_luts
    k, d = record.lut.shape[1], record.lut.shape[2]
    out: dict[str, torch.Tensor] = {"compression_type": torch.tensor([PALETTIZATION])}
    lq = record.lut_quant
    # coremltools 9's quantized-LUT reordering pass drops vector_axis, so vector LUTs stay float
    integer_lut = lq is not None and not lq.spec.is_float8 and d == 1
    out["lut"] = record.lut.detach().float().reshape(*groups, k, d).clone()
    if d > 1:
        out["vector_axis"] = torch.tensor(record.axis)
    if record.per_channel_scale is not None:
        out["palettization_scale"] = record.per_channel_scale.detach().float().reshape(
            -1, *([1] * (rank - 1))).clone()
    if integer_lut:
        out["compression_type"] = torch.tensor([PALETTIZATION, QUANTIZATION])
        out["quantization_n_bits"] = torch.tensor(lq.spec.n_bits)
        out["quantization_scale"] = lq.scale.detach().float().reshape(*groups, 1, 1).clone()
        if lq.zero_point is not None:
            out["zero_point"] = lq.zero_point.detach().float().reshape(*groups, 1, 1).clone()
    return out


def _quant(x: torch.Tensor, record: ActivationQuant) -> torch.Tensor:
    if not torch.jit.is_tracing():
        return record.fake_quantize(x)
    dtype = _QDTYPES[record.spec.dtype_name]  # checked by finalize
    zp = 0 if record.zero_point is None else int(torch.as_tensor(record.zero_point).reshape(-1)[0].round())
    return torch.quantize_per_tensor(x, float(record.scale.reshape(-1)[0]), zp, dtype).dequantize()


def _step(record: ActivationQuant) -> Any:
    """The hook step for ``record``: fake quantization in eager mode, quantize/dequantize while tracing."""
    return functools.partial(_quant, record=record)
