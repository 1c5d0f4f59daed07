"""Scoring engines: run the model with one layer's weight replaced and score its outputs.

``naive``: for every (layer, candidate), put the candidate's dequantized weight in
the layer and run a full forward pass over every batch.

``fast``: trace the model once with :mod:`torch.fx` and walk its graph node by node
with the original weights (the baseline pass). Arriving at the first node that uses
a layer, the walk holds every value the rest of the graph needs (each layer's input
activations and any skip connections); it then runs *only the remaining nodes*
once per candidate of that layer, from those cached values, and continues the
baseline. Everything before the changed layer is computed once per walk instead of
once per candidate, which on MobileNetV2 leaves about a third of the work (the
measured ratio is printed by ``benchmarks/sensitivity_bench.py``). Memory holds
only the live values at the current node, never all activations.

The fast engine executes the same modules and functions on the same tensors as
the eager forward pass, so its scores equal the naive engine's (bit for bit on
CPU in our tests; they are compared with a relative tolerance of 1e-6 on dB scores
in the tests). Safety nets, each falling back to the naive engine with a warning
that says why:

- the model cannot be traced by ``torch.fx`` (data-dependent control flow, ...);
- the traced graph's output differs from the eager model's reference output
  (checked before any candidate is scored);
- an in-place operation (``relu_``, ``x += y``, ``inplace=True`` modules) that
  would write into a cached value is given a private copy first, and the baseline
  output at the end of the walk is checked again.
"""

from __future__ import annotations

import inspect
import operator
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
from attrs import define, field
from torch import nn

from ..compressed import PalettizedTensor
from .inputs import Batch, _pick, run_batches

__all__ = ["ENGINES", "EngineFallbackWarning", "EvalTask", "EvalUnit", "GraphWalker", "UnitResult", "run_unit"]

ENGINES = ("auto", "fast", "naive")
"""Accepted values of ``compute_sensitivity(engine=...)``."""


class EngineFallbackWarning(UserWarning):
    """The fast (torch.fx) engine could not be used for a model; the naive engine ran instead."""


class _Fallback(Exception):
    """Internal: the fast engine cannot run this unit (message says why)."""


@define
class EvalTask:
    """One layer and the candidates (index, record) to score on it."""

    layer_index: int
    name: str
    tensor: str
    candidates: list[tuple[int, PalettizedTensor]]


@define
class EvalUnit:
    """A self-contained piece of scoring work (picklable: it may run in another process)."""

    model: nn.Module
    batches: list[Batch]
    reference: torch.Tensor
    metric: Any
    output_fn: Callable[[Any], torch.Tensor]
    engine: str
    tasks: list[EvalTask]
    threads: Optional[int] = None


@define
class UnitResult:
    """Scores ``(layer_index, candidate_index, score, seconds)``, the engine that produced them and why."""

    scores: list[tuple[int, int, float, float]] = field(factory=list)
    engine: str = "naive"
    note: Optional[str] = None


Emit = Callable[[int, int, float, float], None]


def run_unit(unit: EvalUnit, emit: Optional[Emit] = None) -> UnitResult:
    """Score every task of ``unit``; ``emit(layer_index, candidate_index, score, seconds)`` sees each score as it lands."""
    if unit.threads:
        torch.set_num_threads(unit.threads)
    result = UnitResult()

    def record(li: int, ci: int, score: float, seconds: float) -> None:
        result.scores.append((li, ci, score, seconds))
        if emit is not None:
            emit(li, ci, score, seconds)

    was_training = unit.model.training
    unit.model.eval()
    try:
        if unit.engine == "fast":
            try:
                walker = GraphWalker(unit.model, unit.output_fn)
                walker.check(unit.batches, unit.reference)
                ok = walker.walk(unit.batches, unit.tasks, unit.metric, unit.reference, record)
                result.engine = "fast"
                if not ok:
                    raise _Fallback("the baseline output changed during the walk (an in-place operation wrote into "
                                    "a cached value); the unit's scores were recomputed")
                return result
            except _Fallback as exc:
                result.note = f"fast engine not used for {type(unit.model).__name__}: {exc}"
                result.scores.clear()
                result.engine = "naive"
        _naive(unit, record)
        return result
    finally:
        unit.model.train(was_training)


def _naive(unit: EvalUnit, record: Emit) -> None:
    for task in unit.tasks:
        module = unit.model.get_submodule(task.name)
        param = getattr(module, task.tensor)
        original = param.data
        try:
            for ci, rec in task.candidates:
                start = time.perf_counter()
                param.data = rec.dequantize().to(device=original.device, dtype=original.dtype)
                out = run_batches(unit.model, unit.batches, unit.output_fn)
                record(task.layer_index, ci, float(unit.metric.score(unit.reference, out)),
                       time.perf_counter() - start)
        finally:
            param.data = original


# ---------------------------------------------------------------------- torch.fx walker

_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift,
                      operator.irshift, operator.imatmul, operator.setitem}


def _mutates(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when ``node`` may write into its first argument."""
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.endswith("__")
    if node.op == "call_function":
        if node.target in _INPLACE_FUNCTIONS or node.kwargs.get("inplace") is True:
            return True
        name = getattr(node.target, "__name__", "")
        return name.endswith("_") and not name.endswith("__")
    return False


class GraphWalker:
    """A model traced by ``torch.fx``, executed node by node so execution can resume from any node.

    :raises _Fallback: when tracing fails.
    """

    def __init__(self, model: nn.Module, output_fn: Callable[[Any], torch.Tensor]):
        try:
            self.gm = torch.fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means "use the naive engine"
            raise _Fallback(f"torch.fx cannot trace it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") \
                from None
        self.model = model
        self.output_fn = output_fn
        self.nodes = list(self.gm.graph.nodes)
        self.modules = dict(self.gm.named_modules())
        position = {node: i for i, node in enumerate(self.nodes)}
        self.last_use = {node: max((position[u] for u in node.users), default=position[node]) for node in self.nodes}
        self.inputs = [list(node.all_input_nodes) for node in self.nodes]
        self.mutating = [_mutates(node, self.modules) for node in self.nodes]
        self.placeholders = [node for node in self.nodes if node.op == "placeholder"]
        self.signature = inspect.signature(model.forward)

    # ------------------------------------------------------------------ execution

    def start_of(self, layer: str) -> Optional[int]:
        """Index of the first node that uses module ``layer`` (call or attribute access); ``None`` if unused."""
        prefix = layer + "."
        for i, node in enumerate(self.nodes):
            if node.op == "call_module" and (node.target == layer or str(node.target).startswith(prefix)):
                return i
            if node.op == "get_attr" and str(node.target).startswith(prefix):
                return i
        return None

    def _bind(self, batch: Batch) -> dict[torch.fx.Node, Any]:
        args, kwargs = batch
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise _Fallback(f"cannot bind the batch to forward{self.signature}: {exc}") from None
        env = {}
        for node in self.placeholders:
            name = str(node.target).lstrip("*")
            if name in bound.arguments:
                env[node] = bound.arguments[name]
            elif node.args:
                env[node] = node.args[0]
            else:
                param = self.signature.parameters.get(name)
                if param is None or param.default is inspect.Parameter.empty:
                    raise _Fallback(f"no value for the traced input {name!r}")
                env[node] = param.default
        return env

    def _exec(self, i: int, env: dict[torch.fx.Node, Any]) -> Any:
        node = self.nodes[i]
        load = env.__getitem__
        args = torch.fx.node.map_arg(node.args, load)
        kwargs = torch.fx.node.map_arg(node.kwargs, load)
        op = node.op
        if op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if op == "call_function":
            return node.target(*args, **kwargs)
        if op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if op == "get_attr":
            obj = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        if op == "output":
            return args[0]
        raise _Fallback(f"unsupported fx node kind {op!r}")

    def _run(self, start: int, env: dict[torch.fx.Node, Any], *, private: bool) -> Any:
        """Execute nodes ``start..`` on ``env`` (a private copy when ``private``); returns the model output."""
        local = dict(env) if private else env
        shared = set(env) if private else set()
        out = None
        for i in range(start, len(self.nodes)):
            node = self.nodes[i]
            if node.op == "placeholder":
                continue
            if self.mutating[i] and shared and node.all_input_nodes:
                first = node.args[0] if node.args else None
                if isinstance(first, torch.fx.Node) and first in shared:
                    value = local[first]
                    local[first] = value.clone() if isinstance(value, torch.Tensor) else value
                    shared.discard(first)
            value = self._exec(i, local)
            if node.op == "output":
                out = value
                break
            local[node] = value
            for src in self.inputs[i]:
                if self.last_use[src] == i:
                    local.pop(src, None)
            if not node.users:
                local.pop(node, None)
        return out

    def run(self, batches: Sequence[Batch]) -> torch.Tensor:
        """The traced model's picked output over every batch (no grad)."""
        with torch.inference_mode():
            return _cat([_pick(self.output_fn, self._run(0, self._bind(b), private=False)) for b in batches])

    def check(self, batches: Sequence[Batch], reference: torch.Tensor) -> None:
        """Raise :class:`_Fallback` unless the traced graph reproduces the eager reference output."""
        out = self.run(batches)
        if out.shape != reference.shape or not torch.equal(out, reference):
            diff = (out - reference).abs().max().item() if out.shape == reference.shape else float("nan")
            raise _Fallback(f"the traced graph's output differs from the eager model's (max abs diff {diff:.3g})")

    def walk(self, batches: Sequence[Batch], tasks: Sequence[EvalTask], metric: Any, reference: torch.Tensor,
             record: Emit) -> bool:
        """Score every task from its layer's first node; returns whether the final baseline output still matched."""
        stops: dict[int, list[EvalTask]] = {}
        unused: list[EvalTask] = []
        for task in tasks:
            where = self.start_of(task.name)
            (unused.append(task) if where is None else stops.setdefault(where, []).append(task))
        with torch.inference_mode():
            for task in unused:  # the layer never runs: every candidate leaves the output unchanged
                for ci, _ in task.candidates:
                    record(task.layer_index, ci, float(metric.score(reference, reference)), 0.0)
            if not stops:
                return True
            envs = [self._bind(b) for b in batches]
            last_stop = max(stops)
            outputs: list[Any] = [None] * len(envs)
            for i in range(len(self.nodes)):
                for task in stops.get(i, ()):
                    self._score_from(i, envs, task, metric, reference, record)
                if i == last_stop and not self._needs_final_check():
                    return True
                node = self.nodes[i]
                if node.op == "placeholder":
                    continue
                for b, env in enumerate(envs):
                    value = self._exec(i, env)
                    if node.op == "output":
                        outputs[b] = value
                        continue
                    env[node] = value
                    for src in self.inputs[i]:
                        if self.last_use[src] == i:
                            env.pop(src, None)
            final = _cat([_pick(self.output_fn, o) for o in outputs])
            return final.shape == reference.shape and torch.equal(final, reference)

    def _needs_final_check(self) -> bool:
        return any(self.mutating)

    def _score_from(self, i: int, envs: list[dict], task: EvalTask, metric: Any, reference: torch.Tensor,
                    record: Emit) -> None:
        module = self.model.get_submodule(task.name)
        param = getattr(module, task.tensor)
        original = param.data
        try:
            for ci, rec in task.candidates:
                start = time.perf_counter()
                param.data = rec.dequantize().to(device=original.device, dtype=original.dtype)
                out = _cat([_pick(self.output_fn, self._run(i, env, private=True)) for env in envs])
                record(task.layer_index, ci, float(metric.score(reference, out)), time.perf_counter() - start)
        finally:
            param.data = original


def _cat(outs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def warn_fallback(note: str) -> None:
    """Emit the :class:`EngineFallbackWarning` for ``note``."""
    warnings.warn(f"bitsmith sensitivity: {note}; using the naive engine (a full forward pass per layer and "
                  "candidate)", EngineFallbackWarning, stacklevel=3)
