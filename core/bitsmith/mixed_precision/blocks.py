"""The ``block`` scoring engine: eager replay of module calls, no torch.fx.

A baseline pass records the model's *call tree*: every ``nn.Module`` call in the
order it happens (its parent call and where its subtree ends). A scored layer's
first call splits the forward pass in two. Everything before it cannot depend on the
layer's weight, so a second baseline pass keeps the return values of the
*frontier*: the calls that finished before the layer started and whose parent is one
of the layer's enclosing calls (for a transformer: the earlier blocks, and inside the
layer's own block the sub-modules that ran before it). Scoring a candidate then runs
the ordinary eager forward with each frontier call answered from that cache (a copy,
so in-place operations downstream cannot corrupt it) and without running its
children; the layer's enclosing calls and everything after it run for real.

This needs nothing but ``nn.Module.__call__`` and works for any model that calls its
sub-modules (Hugging Face transformers included). Blocks are not named by the user:
they are the call tree itself, so a ``ModuleList`` of decoder layers, a
``Sequential`` or any nesting is found automatically, at every depth.

Exactness: the replayed values are the baseline's own tensors and every module the
changed layer can influence runs as in eager mode, so scores equal the naive
engine's. Safety nets (each leads to the naive engine, with the reason):

- a module holding the scored tensor (tied weights) is never answered from the
  cache, and the earliest call of any holder starts the re-run;
- the recording passes must reproduce the reference output and each other's call
  trees (no data-dependent module order before a layer);
- :meth:`BlockReplay.check` replays the largest frontier (the last layer's) with the
  original weights and requires the reference output bit for bit, which catches
  skipped side effects that later code reads.

Memory: the frontier's values for every batch, about one set of activations.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch
from attrs import define, field
from torch import nn

from .inputs import Batch, _pick, score_candidates

__all__ = ["BlockReplay", "Call", "ReplayError"]

_MISSING = object()


class ReplayError(Exception):
    """The block engine cannot score this model (message says why)."""


@define
class Call:
    """One module call of a recorded forward pass (pre-order index ``index``)."""

    module: nn.Module
    parent: int
    end: int = -1


@define
class _State:
    """What the installed forwards do: record the call tree, keep outputs, or replay."""

    mode: str = "off"  # off | record | keep | replay
    calls: list[Call] = field(factory=list)
    stack: list[int] = field(factory=list)
    keep: set[int] = field(factory=set)
    kept: dict[int, Any] = field(factory=dict)
    pos: int = 0
    start: int = 0
    stubs: frozenset[int] = frozenset()
    values: dict[int, Any] = field(factory=dict)


def _clone(value: Any) -> Any:
    """A copy of every tensor inside ``value`` (tuples, lists, mappings, output dataclasses); other objects as is."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        items = [_clone(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, list):
        return [_clone(v) for v in value]
    if isinstance(value, Mapping):
        try:
            new = value.copy()  # type: ignore[attr-defined]
            for key, item in value.items():
                new[key] = _clone(item)
            return new
        except Exception:  # noqa: BLE001 - an immutable mapping: return a plain dict copy
            return {k: _clone(v) for k, v in value.items()}
    return value


class BlockReplay:
    """Scores candidates of one model by replaying its recorded module calls.

    :param model: the model (eval mode; its weights are swapped and restored per candidate).
    :param batches: the scoring batches.
    :param output_fn: picks the scored tensor from the model output.
    :param tensors: ``(module name, tensor name)`` of every layer to be scored.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], output_fn: Callable[[Any], torch.Tensor],
                 tensors: Sequence[tuple[str, str]]):
        self.model = model
        self.batches = list(batches)
        self.output_fn = output_fn
        self.tensors = list(dict.fromkeys(tensors))
        self._state = _State()
        self._trees: list[list[Call]] = []
        self._values: list[dict[int, Any]] = []
        self._plans: dict[tuple[str, str], list[tuple[int, frozenset[int]]]] = {}

    # ------------------------------------------------------------------ forwards

    def _install(self) -> list[tuple[nn.Module, Any]]:
        saved = []
        for module in {id(m): m for m in self.model.modules()}.values():
            saved.append((module, module.__dict__.get("forward", _MISSING)))
            module.forward = self._wrap(module, module.forward)
        return saved

    @staticmethod
    def _uninstall(saved: list[tuple[nn.Module, Any]]) -> None:
        for module, forward in saved:
            if forward is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward

    def _wrap(self, module: nn.Module, forward: Callable) -> Callable:
        state = self._state

        @functools.wraps(forward)
        def call(*args: Any, **kwargs: Any) -> Any:
            if state.mode == "off":
                return forward(*args, **kwargs)
            if state.mode in ("record", "keep"):
                return self._record(module, forward, args, kwargs)
            # replay: walk the recorded pre-order until the scored layer's first call
            if state.pos >= len(state.calls) or state.pos > state.start:
                return forward(*args, **kwargs)
            expected = state.calls[state.pos]
            if expected.module is not module:
                raise ReplayError(f"the module calls differ from the recorded ones at call {state.pos} "
                                  f"({type(module).__name__} instead of {type(expected.module).__name__})")
            if state.pos == state.start:
                state.pos = len(state.calls)  # from here on everything runs for real
                return forward(*args, **kwargs)
            if state.pos in state.stubs:
                index, state.pos = state.pos, expected.end
                return _clone(state.values[index])
            state.pos += 1
            return forward(*args, **kwargs)

        return call

    def _record(self, module: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        state = self._state
        index = len(state.calls)
        state.calls.append(Call(module, state.stack[-1] if state.stack else -1))
        state.stack.append(index)
        try:
            out = forward(*args, **kwargs)
        finally:
            state.stack.pop()
        state.calls[index].end = len(state.calls)
        if index in state.keep:
            state.kept[index] = _clone(out)  # later in-place operations must not reach the cache
        return out

    def _forward(self, batch: Batch) -> torch.Tensor:
        args, kwargs = batch
        return _pick(self.output_fn, self.model(*args, **kwargs))

    # ------------------------------------------------------------------ planning

    def prepare(self, reference: torch.Tensor) -> None:
        """Record the call trees and keep the frontier values; raises :class:`ReplayError` if the model cannot replay."""
        state = self._state
        saved = self._install()
        try:
            with torch.inference_mode():
                trees, outs = [], []
                for batch in self.batches:
                    state.mode, state.calls, state.stack = "record", [], []
                    outs.append(self._forward(batch))
                    trees.append(state.calls)
                self._require_reference(outs, reference, "the recording pass")
                plans = [self._plan(tree) for tree in trees]
                self._plans = {key: [p[key] for p in plans] for key in self.tensors}
                values, outs = [], []
                for batch, tree, plan in zip(self.batches, trees, plans):
                    keep = set().union(*(stubs for _, stubs in plan.values())) if plan else set()
                    state.mode, state.calls, state.stack, state.keep, state.kept = "keep", [], [], keep, {}
                    outs.append(self._forward(batch))
                    if [c.module for c in state.calls] != [c.module for c in tree]:
                        raise ReplayError("two baseline passes called the modules in different orders")
                    values.append(state.kept)
                self._require_reference(outs, reference, "the second recording pass")
        finally:
            state.mode, state.keep, state.kept = "off", set(), {}
            self._uninstall(saved)
        self._trees, self._values = trees, values

    def _plan(self, tree: list[Call]) -> dict[tuple[str, str], tuple[int, frozenset[int]]]:
        """For each scored tensor: (first call that may use it, frontier calls answered from the cache)."""
        first: dict[int, int] = {}
        for i, call in enumerate(tree):
            first.setdefault(id(call.module), i)
        owned = {id(m): {id(p) for p in m.parameters()} for m in self.model.modules()}
        plan = {}
        for name, tensor_name in self.tensors:
            tensor = getattr(self.model.get_submodule(name), tensor_name)
            holders = [m for m in self.model.modules() if any(p is tensor for p in m._parameters.values())]
            starts = [first[id(m)] for m in holders if id(m) in first]
            start = min(starts) if starts else 0  # never called: re-run everything (the naive engine)
            ancestors = set()
            i = start
            while i >= 0:
                ancestors.add(i)
                i = tree[i].parent
            stubs = frozenset(
                j for j, call in enumerate(tree[:start])
                if call.parent in ancestors and call.end <= start
                and id(tensor) not in owned[id(call.module)])
            plan[(name, tensor_name)] = (start, stubs)
        return plan

    def _require_reference(self, outs: list[torch.Tensor], reference: torch.Tensor, what: str) -> None:
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        if out.shape != reference.shape or not torch.equal(out, reference):
            raise ReplayError(f"{what} did not reproduce the reference output (non-deterministic model?)")

    # ------------------------------------------------------------------ scoring

    def run(self, key: tuple[str, str]) -> torch.Tensor:
        """The picked output over every batch, re-running only what follows ``key``'s first call."""
        state = self._state
        saved = self._install()
        outs = []
        try:
            with torch.inference_mode():
                for (start, stubs), tree, values, batch in zip(self._plans[key], self._trees, self._values,
                                                               self.batches):
                    state.mode, state.calls, state.pos, state.start = "replay", tree, 0, start
                    state.stubs, state.values = stubs, values
                    outs.append(self._forward(batch))
        finally:
            state.mode, state.values = "off", {}
            self._uninstall(saved)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def check(self, reference: torch.Tensor) -> None:
        """Replay the largest frontier with the original weights; :class:`ReplayError` unless the output is unchanged."""
        if not self.tensors:
            return
        key = max(self.tensors, key=lambda k: sum(len(stubs) for _, stubs in self._plans[k]))
        self._require_reference([self.run(key)], reference, f"replaying the calls before {key[0]!r}")

    def score(self, tasks: Sequence[Any], metric: Any, reference: torch.Tensor,
              record: Callable[[int, int, float, float], None]) -> None:
        """Score every candidate of every task (``EvalTask``); ``record(layer, candidate, score, seconds)``."""
        for task in tasks:
            key = (task.name, task.tensor)
            score_candidates(self.model.get_submodule(task.name), task, lambda: self.run(key),
                             lambda out: float(metric.score(reference, out)), record)
