"""``Quantizer``: post-training INT8 quantization of weights and activations.

Flow (seed 002)::

    quantizer = Quantizer(model, QuantizerConfig())
    prepared = quantizer.prepare(example_inputs)      # weights quantized, activation hooks in place
    with quantizer.calibration_mode(), torch.no_grad():
        for x in calibration_data:
            prepared(x)                               # observers record activation ranges
    prepared(x)                                       # fake-quantized inference (eager PyTorch)
    exported = quantizer.finalize(backend="coreai")   # records -> export backend

``prepare`` checks the whole config and every layer first (nothing is modified when
something is wrong), then quantizes each weight that a spec selects (seed 003
precedence, :func:`bitsmith.resolve.resolve_state_specs`) and attaches a
:class:`~bitsmith.compressed.QuantizedTensor`, writing the dequantized values into
the parameter. Weights that already carry a compressed record (e.g. palettized
ones) are never requantized. Activations: one run of ``example_inputs`` finds every
module's positional inputs and outputs, each gets the spec that
:func:`bitsmith.resolve.resolve_activation_spec` selects, and quantized ones are
fake-quantized by forward hooks (:mod:`.sites`).

``finalize(backend)`` freezes the calibrated ranges into
:class:`~bitsmith.compressed.ActivationQuant` records attached to each module under
``"input.<i>"`` / ``"output.<i>"``, removes the hooks and hands a copy to the
registered export backend (:func:`bitsmith.export.finalize`): ``"coreai"`` turns
each record into a quantize/dequantize pair, ``"torch"`` into a fake-quant
reference. The prepared model keeps working afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any, Iterator, Optional, Union

import torch
from torch import nn

from bitsmith import compressed, plugins
from bitsmith.config import QuantizerConfig, load
from bitsmith.errors import CompressionError, ConfigError
from bitsmith.export import ExportBackend, finalize as export_finalize
from bitsmith.resolve import ResolvedTensor, resolve_activation_spec, resolve_state_specs

from .fold import fold_batchnorm as fold_batchnorms
from .plan import PlannedModule, plan_activations, probe
from .sites import ActivationSite, HookState, InputHook, OutputHook
from .validate import check_config
from .weights import check_weight, quantize_weight, tensor_spec


class AlreadyCompressedWarning(UserWarning):
    """A weight selected for quantization already carries a compressed record and was left as is."""


class Quantizer:
    """Post-training quantization of a model's weights and activations (INT8 by default).

    :param model: the model (not modified unless ``prepare(inplace=True)``); may be
        a palettized model, whose compressed weights are left alone.
    :param config: a ``QuantizerConfig``, a dict, a YAML/JSON path, or ``None`` for
        ``QuantizerConfig()`` (INT8 symmetric per-channel weights, INT8 asymmetric
        per-tensor activations with a moving-average observer).
    :param registry: plugin registry for observers and export backends (default:
        the process-wide one).

    Unsupported specs (float8, int4 activations, per-channel activations, unknown
    observers, bad input/output keys) raise :class:`~bitsmith.errors.ConfigError`
    here, listing every offending field.
    """

    config_class = QuantizerConfig

    def __init__(self, model: nn.Module, config: Any = None, *, registry: Optional[plugins.Registry] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = QuantizerConfig() if config is None else load(config, QuantizerConfig)
        if not isinstance(self.config, QuantizerConfig):
            raise ConfigError(f"config: expected a QuantizerConfig, got {type(self.config).__name__}")
        self.registry = registry or plugins.default_registry()
        check_config(self.config, self.registry.names("observer"))
        self.prepared_model: Optional[nn.Module] = None
        self.weights: dict[str, compressed.QuantizedTensor] = {}
        self.folded: list[str] = []
        self._state = HookState()
        self._handles: list[Any] = []
        self._hooks: list[tuple[nn.Module, str, Any]] = []

    # ------------------------------------------------------------------ planning

    def plan_weights(self, model: Optional[nn.Module] = None) -> list[ResolvedTensor]:
        """Weights to quantize (one per shared tensor), each checked against its spec; nothing is modified.

        A weight that already carries a compressed record is skipped with an
        :class:`AlreadyCompressedWarning`.
        """
        model = self.model if model is None else model
        seen, targets, skipped = set(), [], []
        for item in resolve_state_specs(model, self.config):
            if item.spec is None:
                continue
            tensor = getattr(item.module, item.tensor_name)
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            existing = compressed.records(item.module).get(item.tensor_name)
            if existing is not None:
                skipped.append(f"{item.qualified_name} ({type(existing).__name__})")
                continue
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise CompressionError(f"{item.qualified_name}: cannot quantize a "
                                       f"{getattr(tensor, 'dtype', type(tensor).__name__)} tensor")
            spec = tensor_spec(item.module, item.spec)
            check_weight(tuple(tensor.shape), spec, item.qualified_name)
            targets.append(item)
        if skipped:
            warnings.warn(f"{len(skipped)} weights already carry compressed records and were left as is: "
                          f"{', '.join(skipped)}; set op_state_spec=None to quantize activations only",
                          AlreadyCompressedWarning, stacklevel=3)
        return targets

    # ------------------------------------------------------------------ prepare

    def prepare(self, example_inputs: Any = None, *, inplace: bool = False, fold_batchnorm: bool = True,
                fuse_activations: bool = True) -> nn.Module:
        """Return the model with quantized weights in effect and activation fake-quantization hooks.

        :param example_inputs: representative inputs, run once to find each module's
            inputs and outputs (a tensor, a tuple of positional arguments, or a dict
            of keyword arguments). Required when the config quantizes activations.
        :param inplace: modify ``self.model`` instead of a deep copy.
        :param fold_batchnorm: fold eval-mode batch norms into the conv/linear layer
            before them (:mod:`bitsmith_int8_quant.fold`), as a converter would.
        :param fuse_activations: quantize ``layer -> ReLU/ReLU6/Hardtanh`` after the
            activation instead of between the two (:mod:`bitsmith_int8_quant.plan`).

        Only modules that run on ``example_inputs`` get activation quantization.
        The activations must then be calibrated (:meth:`calibration_mode`) before
        the prepared model is used; until then it raises ``NotCalibratedError``.
        """
        if _may_quantize_activations(self.config) and example_inputs is None:
            raise ValueError("example_inputs: prepare() needs representative inputs to find the activations "
                             "to quantize (or set op_input_spec/op_output_spec to None for weights only)")
        self.plan_weights(self.model)  # every layer checked before anything is copied or changed
        if self.prepared_model is not None:
            self._remove_hooks()
        model = self.model if inplace else copy.deepcopy(self.model)
        self.folded = fold_batchnorms(model) if fold_batchnorm else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AlreadyCompressedWarning)  # already reported above
            targets = self.plan_weights(model)
        activation_plan = self._plan_activations(model, example_inputs, fuse_activations)
        self.weights = {}
        for item in targets:
            tensor = getattr(item.module, item.tensor_name)
            spec = tensor_spec(item.module, item.spec)
            observer = self.registry.get("observer", spec.observer)
            record = quantize_weight(tensor, spec, observer, name=item.qualified_name)
            for owner, pname in _owners(model, tensor):
                compressed.attach(owner, pname, record)
            compressed.apply(item.module, item.tensor_name, record)
            self.weights[item.qualified_name] = record
        self._state = HookState()
        self._install_hooks(activation_plan)
        self.prepared_model = model
        return model

    def _plan_activations(self, model: nn.Module, example_inputs: Any, fuse: bool) -> list[PlannedModule]:
        if not _may_quantize_activations(self.config):
            return []
        return plan_activations(model, self.config, probe(model, example_inputs), fuse=fuse)

    def _install_hooks(self, plan: list[PlannedModule]) -> None:
        self._hooks = []
        for entry in plan:
            for direction, chosen in (("input", entry.inputs), ("output", entry.outputs)):
                if not chosen:
                    continue
                sites = {}
                for index, spec, rule in chosen:
                    factory = self.registry.get("observer", spec.observer)
                    site = ActivationSite(entry.name, direction, index, spec, rule, factory)
                    sites[index] = site
                    self._state.sites.append(site)
                hook = InputHook(sites, self._state) if direction == "input" else OutputHook(sites, self._state)
                self._hooks.append((entry.module, direction, hook))
        self._register_hooks()

    def _register_hooks(self) -> None:
        for module, direction, hook in self._hooks:
            if direction == "input":
                self._handles.append(module.register_forward_pre_hook(hook))
            else:
                self._handles.append(module.register_forward_hook(hook))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ calibration

    @property
    def activation_sites(self) -> list[ActivationSite]:
        """Every quantized activation of the prepared model, in module order."""
        return list(self._state.sites)

    @property
    def is_calibrated(self) -> bool:
        """True when every activation site has a frozen range (always true without activation quantization)."""
        return all(site.record is not None for site in self._state.sites)

    @contextlib.contextmanager
    def calibration_mode(self) -> Iterator[nn.Module]:
        """Context manager: inside, forward passes of the prepared model update the activation observers.

        Activations pass through unquantized while calibrating (weights stay
        quantized). On exit the observed ranges are frozen into scales and zero
        points; outside, observers never change. Entering again continues from the
        ranges observed so far (call :meth:`prepare` again to start over).
        Yields the prepared model.
        """
        if self.prepared_model is None:
            raise RuntimeError("calibration_mode() needs a prepared model: call prepare(example_inputs) first")
        if self._state.calibrating:
            raise RuntimeError("calibration_mode() is already active")
        self._state.calibrating = True
        try:
            yield self.prepared_model
        finally:
            self._state.calibrating = False
            for site in self._state.sites:
                site.freeze()

    # ------------------------------------------------------------------ finalize

    def activation_records(self) -> list[tuple[nn.Module, ActivationSite]]:
        """``(module, site)`` for every site; raises ``RuntimeError`` naming the uncalibrated ones."""
        missing = [s.label for s in self._state.sites if s.record is None]
        if missing:
            shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
            raise RuntimeError(f"{len(missing)} activations were never seen during calibration ({shown}); "
                               "run representative inputs through the prepared model inside calibration_mode()")
        return [(module, site) for module, _, hook in self._hooks for site in hook.sites.values()]

    def finalize(self, backend: Union[str, ExportBackend] = ExportBackend.CoreAI, *,
                 inplace: bool = False) -> nn.Module:
        """Fold the calibrated ranges into records and export with a registered backend.

        Attaches an :class:`~bitsmith.compressed.ActivationQuant` to each module
        under ``"input.<i>"`` / ``"output.<i>"`` (weights already carry their
        :class:`~bitsmith.compressed.QuantizedTensor`), removes the hooks and calls
        :func:`bitsmith.export.finalize` on a copy (``inplace=True``: on the prepared
        model itself, which then no longer fake-quantizes through hooks).
        """
        if self.prepared_model is None:
            raise RuntimeError("finalize() needs a prepared model: call prepare(example_inputs) first")
        pairs = self.activation_records()
        model = self.prepared_model
        self._remove_hooks()
        for module, site in pairs:
            compressed.attach(module, site.record_name, site.record)
        try:
            exported = export_finalize(model, backend, inplace=inplace, registry=self.registry)
        finally:
            if not inplace:
                for module, site in pairs:
                    compressed.detach(module, site.record_name)
                self._register_hooks()
        return exported


def _owners(model: nn.Module, tensor: torch.Tensor) -> Iterator[tuple[nn.Module, str]]:
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if p is tensor:
                yield module, pname


def _may_quantize_activations(config: QuantizerConfig) -> bool:
    scopes = [config.global_config, *config.module_type_configs.values(), *config.module_name_configs.values()]
    for scope in scopes:
        if scope is None:
            continue
        if scope.op_input_spec or scope.op_output_spec or scope.module_input_spec or scope.module_output_spec:
            return True
        for op in [*scope.op_type_config.values(), *scope.op_name_config.values()]:
            if op is not None and (op.op_input_spec or op.op_output_spec):
                return True
    return False
