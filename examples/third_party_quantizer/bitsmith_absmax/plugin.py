"""A third-party quantizer: weight-only symmetric INT8 with one absmax scale per output channel.

``AbsmaxQuantizer(model, config)`` quantizes the ``weight`` of every ``Linear`` and
``Conv2d`` with the spec of ``config.global_config.op_state_spec["weight"]`` (which
must be symmetric int8 per-channel along axis 0, the ``QuantizerConfig`` default);
activations stay float. The records it attaches are the core's ``QuantizedTensor``,
so every export backend handles them.
"""

from __future__ import annotations

import contextlib

import bitsmith
from bitsmith.config import PerChannelGranularity, QuantizationScheme, QuantizerConfig, load


class AbsmaxQuantizer:
    """``QuantizerFactory`` with ``config_class`` (``Configurable``) and a ``registry=`` keyword."""

    config_class = QuantizerConfig

    def __init__(self, model, config=None, *, registry=None):
        self.model = model
        self.config = QuantizerConfig() if config is None else load(config, QuantizerConfig)
        self.registry = registry
        scope = self.config.global_config
        spec = None if scope is None or scope.op_state_spec is None else scope.op_state_spec.get("weight")
        if spec is None or spec.dtype_name != "int8" or spec.qscheme is not QuantizationScheme.SYMMETRIC or \
                spec.granularity != PerChannelGranularity(axis=0):
            raise ValueError("global_config.op_state_spec.weight: absmax supports only symmetric int8 per-channel "
                             f"(axis 0) weights, got {spec!r}")
        self.spec = spec
        self.prepared = None

    def prepare(self, example_inputs=None, **kwargs):
        """A copy of the model with INT8 weights in effect (``example_inputs`` is not needed)."""
        import copy

        import torch
        from torch import nn

        from bitsmith import compressed

        model = copy.deepcopy(self.model)
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                weight = module.weight.detach()
                dims = tuple(range(1, weight.dim()))
                scale = (weight.abs().amax(dim=dims, keepdim=True).float() / 127).clamp(min=1e-12)
                values = torch.round(weight.float() / scale).clamp(-127, 127).to(torch.int8)
                record = compressed.QuantizedTensor(int_data=values, scale=scale, zero_point=None, spec=self.spec,
                                                    shape=tuple(weight.shape), dtype=weight.dtype)
                compressed.apply(module, "weight", record)
        self.prepared = model
        return model

    @contextlib.contextmanager
    def calibration_mode(self):
        """Nothing to calibrate for weight-only quantization."""
        yield self.prepared

    def finalize(self, backend="coreai", **kwargs):
        """Export the prepared model with a registered backend."""
        if self.prepared is None:
            raise RuntimeError("finalize() needs a prepared model: call prepare() first")
        return bitsmith.finalize(self.prepared, backend, registry=self.registry)


@bitsmith.hookimpl
def quantizer(register):
    """Register ``"absmax"``."""
    register("absmax", AbsmaxQuantizer)
