"""Activation fake-quantization through forward hooks.

An :class:`ActivationSite` is one positional input or output of one module that a
spec quantizes. A forward pre-hook (inputs) or forward hook (outputs) on the module
routes each such tensor through its site:

- calibrating (inside ``Quantizer.calibration_mode()``): the site's observer sees
  the tensor and the tensor passes through unchanged (float), so every observer
  measures the float model;
- otherwise: the tensor is fake-quantized with the site's frozen
  :class:`~bitsmith.compressed.ActivationQuant` (the exact function export backends
  reproduce); a site that never saw calibration data raises :class:`NotCalibratedError`.

Hooks leave the model's structure and ``state_dict`` untouched, work with any
Python control flow (no tracing), and are removed by ``Quantizer.finalize``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from bitsmith.compressed import ActivationQuant
from bitsmith.config.specs import QuantizationSpec

from .affine import qparams


class NotCalibratedError(RuntimeError):
    """The prepared model ran outside ``calibration_mode()`` before its activations were calibrated."""


class HookState:
    """Mode shared by every hook of one prepared model: ``calibrating`` or not."""

    def __init__(self) -> None:
        self.calibrating = False
        self.sites: list["ActivationSite"] = []


class ActivationSite:
    """One quantized activation: ``module_name``, ``direction`` (input/output), ``index``, spec, observer.

    ``record`` is the frozen :class:`ActivationQuant` (``None`` until calibrated).
    """

    def __init__(self, module_name: str, direction: str, index: int, spec: QuantizationSpec, rule: str,
                 observer_factory: Callable[[], Any]):
        self.module_name = module_name
        self.direction = direction
        self.index = index
        self.spec = spec
        self.rule = rule
        self.observer = observer_factory()
        self.observations = 0
        self.record: Optional[ActivationQuant] = None

    @property
    def record_name(self) -> str:
        """Name the record is attached under: ``input.<i>`` or ``output.<i>``."""
        return f"{self.direction}.{self.index}"

    @property
    def label(self) -> str:
        """Human label, e.g. ``body.0.conv1 output.0``."""
        return f"{self.module_name or '<model>'} {self.record_name}"

    def observe(self, x: torch.Tensor) -> None:
        """Feed ``x`` to the observer (per-tensor range)."""
        self.observer.observe(x, tuple(range(x.dim())))
        self.observations += 1

    def freeze(self) -> None:
        """Turn the observed range into the fixed :class:`ActivationQuant` (no-op when nothing was observed)."""
        if not self.observations:
            return
        lo, hi = self.observer.bounds()
        lo, hi = lo.detach().reshape(-1).cpu(), hi.detach().reshape(-1).cpu()  # records live on the CPU
        if lo.numel() != 1 or hi.numel() != 1:
            raise ValueError(f"{self.label}: observer {self.spec.observer!r} returned {lo.numel()} bounds for a "
                             "per-tensor activation; expected 1")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError(f"{self.label}: calibration saw non-finite values (min {lo.item()}, max {hi.item()}); "
                             "check the calibration inputs")
        scale, zero_point = qparams(lo[0], hi[0], self.spec)
        self.record = ActivationQuant(scale=scale, zero_point=zero_point, spec=self.spec)

    def __call__(self, x: Any, state: HookState) -> Any:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        if state.calibrating:
            self.observe(x)
            return x
        if self.record is None:
            missing = [s.label for s in state.sites if s.record is None]
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise NotCalibratedError(
                f"activation {self.label} is not calibrated ({len(missing)} of {len(state.sites)} activations "
                f"uncalibrated: {shown}); run forward passes on representative inputs inside "
                "`with quantizer.calibration_mode():` before using the prepared model"
            )
        return self.record.fake_quantize(x).to(x.dtype)

    def __repr__(self) -> str:
        status = "calibrated" if self.record is not None else f"{self.observations} observations"
        return f"ActivationSite({self.label}, {self.spec.dtype_name} {self.spec.qscheme.value}, {status})"


class InputHook:
    """Forward pre-hook: fake-quantizes positional inputs by index."""

    def __init__(self, sites: dict[int, ActivationSite], state: HookState):
        self.sites, self.state = sites, state

    def __call__(self, module: nn.Module, args: tuple) -> Optional[tuple]:
        if not self.sites:
            return None
        return tuple(self.sites[i](a, self.state) if i in self.sites else a for i, a in enumerate(args))


class OutputHook:
    """Forward hook: fake-quantizes the output (index 0) or the elements of a tuple/list output."""

    def __init__(self, sites: dict[int, ActivationSite], state: HookState):
        self.sites, self.state = sites, state

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            site = self.sites.get(0)
            return output if site is None else site(output, self.state)
        if isinstance(output, (tuple, list)):
            items = [self.sites[i](o, self.state) if i in self.sites else o for i, o in enumerate(output)]
            if isinstance(output, tuple) and hasattr(output, "_fields"):  # namedtuple
                return type(output)(*items)
            return type(output)(items)
        return output


def float_positions(value: Any) -> list[int]:
    """Indices of the floating-point tensors in a positional-args tuple or a module output."""
    if isinstance(value, torch.Tensor):
        return [0] if value.is_floating_point() else []
    if isinstance(value, (tuple, list)):
        return [i for i, v in enumerate(value) if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return []
