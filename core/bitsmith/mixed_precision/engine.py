"""Scoring engines: run the model with one layer's weight replaced and score its outputs.

``naive``: for every (layer, candidate), put the candidate's dequantized weight in
the layer and run a full forward pass over every batch.

``block`` (:mod:`bitsmith.mixed_precision.blocks`): no torch.fx; the eager forward
pass with every module call that finished before the changed layer answered from a
cache of the baseline's values. Chosen by ``auto`` when fx cannot trace the model.

``local`` (:mod:`bitsmith.mixed_precision.local`): each layer alone on its cached
calibration inputs, scored on its own output (no re-run of the rest of the model);
an approximation for models too large for end-to-end scoring.

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
CPU in our tests and on MobileNetV2). Safety nets, each falling back to the naive
engine with an :class:`EngineFallbackWarning` that says why:

- the model cannot be traced by ``torch.fx`` (data-dependent control flow, ...);
- the traced graph's output differs from the eager model's reference output
  (checked once, right after tracing, before any candidate is scored);
- an in-place operation (``relu_``, ``x += y``, ``inplace=True`` modules) that
  would write into a cached value is given a private copy first, and the baseline
  output at the end of the walk is checked again (a mismatch re-scores that unit).

Tracing patches ``nn.Module.__call__`` globally while it runs (and so does
unpickling an fx ``GraphModule``), so the model is traced once in the calling
thread (:func:`trace`) and turned into a :class:`Program` of plain, picklable
steps that work units carry, next to a copy of the model, to threads or processes.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
from attrs import define, field
from torch import nn

from ..compressed import PalettizedTensor
from .blocks import BlockReplay, ReplayError
from .inputs import Batch, _pick, run_batches, score_candidates
from .local import score_locally

__all__ = ["ENGINES", "EngineFallbackWarning", "EvalTask", "EvalUnit", "GraphWalker", "Program", "Ref", "Step",
           "UnitResult", "check_blocks", "eval_mode", "run_unit", "trace"]

ENGINES = ("auto", "fast", "block", "local", "naive")
"""Accepted values of ``compute_sensitivity(engine=...)``."""


class EngineFallbackWarning(UserWarning):
    """The requested exact engine (fast or block) could not be used for a model; the naive engine ran instead."""


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
    program: Any = None
    """The fast engine's :class:`Program`; for the block engine in this process, the prepared :class:`BlockReplay`."""


@define
class UnitResult:
    """Scores ``(layer_index, candidate_index, score, seconds)``, the engine that produced them and why."""

    scores: list[tuple[int, int, float, float]] = field(factory=list)
    engine: str = "naive"
    note: Optional[str] = None
    reference_diff: float = 0.0
    """In a worker: largest difference between its own reference output and the caller's (0.0: bit-identical)."""


Emit = Callable[[int, int, float, float], None]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def trace(model: nn.Module, batches: Sequence[Batch], reference: torch.Tensor,
          output_fn: Callable[[Any], torch.Tensor]) -> tuple[Optional["Program"], Optional[str]]:
    """Trace ``model`` for the fast engine and check the program reproduces ``reference``.

    Returns ``(program, None)``, or ``(None, reason)`` when the fast engine cannot be
    used. Tracing patches ``nn.Module.__call__`` globally while it runs, so it is
    done once, here, in the calling thread; work units carry the resulting
    :class:`Program` (plain data) next to a copy of the model and never trace.
    """
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "use the naive engine"
        first = (str(exc).splitlines() or [""])[0][:200]
        return None, f"fast engine not used for {type(model).__name__}: torch.fx cannot trace it " \
                     f"({type(exc).__name__}: {first})"
    program = Program.from_graph_module(gm, model)
    try:
        GraphWalker(model, program, output_fn).check(batches, reference)
    except _Fallback as exc:
        return None, f"fast engine not used for {type(model).__name__}: {exc}"
    return program, None


def run_unit(unit: EvalUnit, emit: Optional[Emit] = None) -> UnitResult:
    """Score every task of ``unit``; ``emit(layer_index, candidate_index, score, seconds)`` sees each score as it lands.

    With ``engine="fast"``, ``unit.program`` is the checked program from :func:`trace`.
    ``"block"`` records the call tree here (a few baseline passes) and replays it.
    """
    result = UnitResult(engine=unit.engine)

    def record(li: int, ci: int, score: float, seconds: float) -> None:
        result.scores.append((li, ci, score, seconds))
        if emit is not None:
            emit(li, ci, score, seconds)

    with eval_mode(unit.model):
        if unit.engine == "fast":
            walker = GraphWalker(unit.model, unit.program, unit.output_fn)
            if walker.walk(unit.batches, unit.tasks, unit.metric, unit.reference, record):
                return result
            result.note = ("fast engine: the baseline output changed during the walk (an in-place operation wrote "
                           "into a cached value); this unit's scores were recomputed")
            result.scores.clear()
            result.engine = "naive"
        elif unit.engine == "block":
            replay = unit.program
            if replay is None:  # in a worker: record here, from the unit's own model copy
                replay = BlockReplay(unit.model, unit.batches, unit.output_fn, [(t.name, t.tensor) for t in unit.tasks])
                try:
                    replay.prepare(unit.reference)
                except ReplayError as exc:
                    replay = None
                    result.note = f"block engine not used for {type(unit.model).__name__}: {exc}"
                    result.engine = "naive"
            if replay is not None:
                replay.score(unit.tasks, unit.metric, unit.reference, record)
                return result
        elif unit.engine == "local":
            score_locally(unit.model, unit.batches, unit.tasks, unit.metric, record)
            return result
        _naive(unit, record)
    return result


def check_blocks(model: nn.Module, batches: Sequence[Batch], reference: torch.Tensor,
                 output_fn: Callable[[Any], torch.Tensor], tensors: Sequence[tuple[str, str]]
                 ) -> tuple[Optional[BlockReplay], Optional[str]]:
    """``(replay, None)`` when the block engine reproduces ``reference`` on ``model``, else ``(None, why not)``.

    The checked replay can score in this process (``EvalUnit.program``); workers record their own.
    """
    try:
        replay = BlockReplay(model, batches, output_fn, tensors)
        replay.prepare(reference)
        replay.check(reference)
    except ReplayError as exc:
        return None, f"block engine not used for {type(model).__name__}: {exc}"
    return replay, None


def _naive(unit: EvalUnit, record: Emit) -> None:
    for task in unit.tasks:
        score_candidates(unit.model.get_submodule(task.name), task,
                         lambda: run_batches(unit.model, unit.batches, unit.output_fn),
                         lambda out: float(unit.metric.score(unit.reference, out)), record)


# ---------------------------------------------------------------------- torch.fx walker


@define(frozen=True)
class Ref:
    """Inside a :class:`Step`'s arguments: the value computed by step ``index``."""

    index: int


_NO_DEFAULT = "<no default>"


@define(frozen=True)
class Step:
    """One node of a traced graph as plain, picklable data.

    ``op`` is fx's (``placeholder``, ``get_attr``, ``call_function``,
    ``call_method``, ``call_module``, ``output``) or ``constant`` (a value the tracer
    created, held in ``target``); node references in ``args``/``kwargs`` are :class:`Ref`.
    """

    op: str
    target: Any
    args: tuple
    kwargs: dict
    default: Any = _NO_DEFAULT


def _convert(value: Any, index: dict) -> Any:
    if isinstance(value, torch.fx.Node):
        return Ref(index[value])
    if isinstance(value, tuple):
        return tuple(_convert(v, index) for v in value)
    if isinstance(value, list):
        return [_convert(v, index) for v in value]
    if isinstance(value, dict):
        return {k: _convert(v, index) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_convert(value.start, index), _convert(value.stop, index), _convert(value.step, index))
    return value


def _refs(value: Any) -> list[int]:
    if isinstance(value, Ref):
        return [value.index]
    if isinstance(value, (tuple, list)):
        return [i for v in value for i in _refs(v)]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _refs(v)]
    if isinstance(value, slice):
        return _refs(value.start) + _refs(value.stop) + _refs(value.step)
    return []


def _load(value: Any, env: dict[int, Any]) -> Any:
    if isinstance(value, Ref):
        return env[value.index]
    if isinstance(value, tuple):
        return tuple(_load(v, env) for v in value)
    if isinstance(value, list):
        return [_load(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _load(v, env) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_load(value.start, env), _load(value.stop, env), _load(value.step, env))
    return value


def _attr(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


@define
class Program:
    """A traced forward pass as a list of :class:`Step` (picklable; executed by :class:`GraphWalker`)."""

    steps: list[Step]

    @classmethod
    def from_graph_module(cls, gm: torch.fx.GraphModule, model: nn.Module) -> "Program":
        """Convert ``gm`` (traced from ``model``); attributes the tracer added become constants."""
        nodes = list(gm.graph.nodes)
        index = {node: i for i, node in enumerate(nodes)}
        steps = []
        for node in nodes:
            if node.op == "get_attr":
                try:
                    _attr(model, str(node.target))
                except AttributeError:
                    steps.append(Step("constant", _attr(gm, str(node.target)), (), {}))
                    continue
            default = node.args[0] if node.op == "placeholder" and node.args else _NO_DEFAULT
            args = () if node.op == "placeholder" else _convert(tuple(node.args), index)
            steps.append(Step(node.op, node.target, args, _convert(dict(node.kwargs), index), default))
        return cls(steps)


_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift,
                      operator.irshift, operator.imatmul, operator.setitem}


def _mutates(step: Step, module: Optional[nn.Module]) -> bool:
    """True when ``step`` may write into its first argument."""
    if step.op == "call_module":
        return bool(getattr(module, "inplace", False))
    if step.op == "call_method":
        name = str(step.target)
        return name.endswith("_") and not name.endswith("__")
    if step.op == "call_function":
        if step.target in _INPLACE_FUNCTIONS or step.kwargs.get("inplace") is True:
            return True
        name = getattr(step.target, "__name__", "")
        return name.endswith("_") and not name.endswith("__")
    return False


class GraphWalker:
    """Executes a :class:`Program` on ``model`` step by step, so execution can resume from any step."""

    def __init__(self, model: nn.Module, program: Program, output_fn: Callable[[Any], torch.Tensor]):
        self.model = model
        self.steps = program.steps
        self.output_fn = output_fn
        self.modules = {s.target: model.get_submodule(s.target) for s in self.steps if s.op == "call_module"}
        self.inputs = [sorted(set(_refs(s.args) + _refs(s.kwargs))) for s in self.steps]
        self.last_use = list(range(len(self.steps)))
        for i, srcs in enumerate(self.inputs):
            for src in srcs:
                self.last_use[src] = max(self.last_use[src], i)
        self.mutating = [_mutates(s, self.modules.get(s.target) if s.op == "call_module" else None)
                         for s in self.steps]
        self.placeholders = [i for i, s in enumerate(self.steps) if s.op == "placeholder"]
        self.signature = inspect.signature(model.forward)

    # ------------------------------------------------------------------ execution

    def start_of(self, layer: str) -> Optional[int]:
        """Index of the first step that uses module ``layer`` (call or attribute access); ``None`` if unused."""
        prefix = layer + "."
        for i, step in enumerate(self.steps):
            if step.op == "call_module" and (step.target == layer or str(step.target).startswith(prefix)):
                return i
            if step.op == "get_attr" and str(step.target).startswith(prefix):
                return i
        return None

    def _bind(self, batch: Batch) -> dict[int, Any]:
        args, kwargs = batch
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise _Fallback(f"cannot bind the batch to forward{self.signature}: {exc}") from None
        env = {}
        for i in self.placeholders:
            step = self.steps[i]
            name = str(step.target).lstrip("*")
            if name in bound.arguments:
                env[i] = bound.arguments[name]
            elif step.default is not _NO_DEFAULT:
                env[i] = step.default
            else:
                param = self.signature.parameters.get(name)
                if param is None or param.default is inspect.Parameter.empty:
                    raise _Fallback(f"no value for the traced input {name!r}")
                env[i] = param.default
        return env

    def _exec(self, i: int, env: dict[int, Any]) -> Any:
        step = self.steps[i]
        op = step.op
        if op == "constant":
            return step.target
        if op == "get_attr":
            return _attr(self.model, str(step.target))
        args = _load(step.args, env)
        kwargs = _load(step.kwargs, env)
        if op == "call_module":
            return self.modules[step.target](*args, **kwargs)
        if op == "call_function":
            return step.target(*args, **kwargs)
        if op == "call_method":
            return getattr(args[0], step.target)(*args[1:], **kwargs)
        if op == "output":
            return args[0]
        raise _Fallback(f"unsupported fx node kind {op!r}")

    def _run(self, start: int, env: dict[int, Any], *, private: bool) -> Any:
        """Execute steps ``start..`` on ``env`` (a private copy when ``private``); returns the model output."""
        local = dict(env) if private else env
        shared = set(env) if private else set()
        for i in range(start, len(self.steps)):
            step = self.steps[i]
            if step.op == "placeholder":
                continue
            if self.mutating[i] and shared and step.args:
                first = step.args[0]
                if isinstance(first, Ref) and first.index in shared:
                    value = local[first.index]
                    local[first.index] = value.clone() if isinstance(value, torch.Tensor) else value
                    shared.discard(first.index)
            value = self._exec(i, local)
            if step.op == "output":
                return value
            local[i] = value
            for src in self.inputs[i]:
                if self.last_use[src] == i:
                    local.pop(src, None)
            if self.last_use[i] == i:
                local.pop(i, None)
        return None

    def run(self, batches: Sequence[Batch]) -> torch.Tensor:
        """The program's picked output over every batch (no grad)."""
        with torch.inference_mode():
            return _cat([_pick(self.output_fn, self._run(0, self._bind(b), private=False)) for b in batches])

    def check(self, batches: Sequence[Batch], reference: torch.Tensor) -> None:
        """Raise :class:`_Fallback` unless the program reproduces the eager reference output."""
        out = self.run(batches)
        if out.shape != reference.shape or not torch.equal(out, reference):
            diff = (out - reference).abs().max().item() if out.shape == reference.shape else float("nan")
            raise _Fallback(f"the traced graph's output differs from the eager model's (max abs diff {diff:.3g})")

    def walk(self, batches: Sequence[Batch], tasks: Sequence[EvalTask], metric: Any, reference: torch.Tensor,
             record: Emit) -> bool:
        """Score every task from its layer's first step; returns whether the final baseline output still matched."""
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
            needs_final_check = any(self.mutating)
            outputs: list[Any] = [None] * len(envs)
            for i, step in enumerate(self.steps):
                for task in stops.get(i, ()):
                    self._score_from(i, envs, task, metric, reference, record)
                if i == last_stop and not needs_final_check:
                    return True
                if step.op == "placeholder":
                    continue
                for b, env in enumerate(envs):
                    value = self._exec(i, env)
                    if step.op == "output":
                        outputs[b] = value
                        continue
                    env[i] = value
                    for src in self.inputs[i]:
                        if self.last_use[src] == i:
                            env.pop(src, None)
                    if self.last_use[i] == i:
                        env.pop(i, None)
            final = _cat([_pick(self.output_fn, o) for o in outputs])
            return final.shape == reference.shape and torch.equal(final, reference)

    def _score_from(self, i: int, envs: list[dict], task: EvalTask, metric: Any, reference: torch.Tensor,
                    record: Emit) -> None:
        score_candidates(self.model.get_submodule(task.name), task,
                         lambda: _cat([_pick(self.output_fn, self._run(i, env, private=True)) for env in envs]),
                         lambda out: float(metric.score(reference, out)), record)


def _cat(outs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def warn_fallback(note: str) -> None:
    """Emit the :class:`EngineFallbackWarning` for ``note``."""
    warnings.warn(f"bitsmith sensitivity: {note}; using the naive engine (a full forward pass per layer and "
                  "candidate)", EngineFallbackWarning, stacklevel=3)
