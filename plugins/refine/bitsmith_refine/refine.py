"""Refine a palettized model: fit its LUT entries and per-channel scales to the fp32 model's outputs.

The compressed layout stays exactly as it is (same indices, same number of LUTs and
scales, same dtype), so the size is unchanged; only the values the indices point to
and the per-channel scales move. They are trained by Adam, end to end, to make the
compressed model's outputs match the fp32 reference's on calibration batches
(KL divergence of the logits for classifiers, MSE of the outputs otherwise). The
parameters are few (a LUT holds at most 256 entries; one scale per output channel),
so a handful of calibration photos, augmented, does not overfit them; a validation
split of the calibration batches keeps the best step.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from typing import Any, Iterable, Iterator, Optional, Sequence

import attrs
import torch
import torch.nn.functional as F
from attrs import define
from torch import nn

from bitsmith import compressed

__all__ = ["LOSSES", "RefineOptions", "RefineResult", "refine"]

#: Training losses by name: ``loss(reference_output, output) -> scalar tensor``.
LOSSES = {
    "kl": lambda ref, out: F.kl_div(F.log_softmax(out, -1), F.log_softmax(ref, -1), log_target=True,
                                    reduction="batchmean"),
    "mse": lambda ref, out: F.mse_loss(out, ref) * ref.shape[-1],
}


def _positive_int(name: str):
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return check


def _positive_float(name: str):
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return check


def _non_negative_float(name: str):
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
    return check


def _loss_name(_inst: Any, _attr: Any, value: Any) -> None:
    if value not in LOSSES:
        raise ValueError(f"loss: {value!r} is not one of {', '.join(sorted(LOSSES))}")


@define(frozen=True, kw_only=True)
class RefineOptions:
    """How :func:`refine` trains.

    :param steps: optimizer steps (one calibration batch each, cycling).
    :param lr: Adam learning rate, relative: LUTs are trained in units of their own
        largest magnitude and scales in log space, so ``1e-3`` moves a value by about 0.1%
        (Adam moves every value by about ``lr`` per step at first: keep it small).
    :param loss: ``"kl"`` (logits) or ``"mse"`` (embeddings); see :data:`LOSSES`.
    :param eval_every: steps between validation checks (the best checked step is kept).
    :param train_luts: train LUT entries.
    :param train_scales: train per-channel scales (records that have them).
    :param anchor: trust region: adds ``anchor`` times the sum of squared moves of the
        trained values from where they started (LUT entries in units of their LUT's
        largest magnitude, scales in log space) to the loss; 0: none.
    :param feature_weight: also match every refined layer's output to the fp32 layer's
        output (normalized squared error, averaged over layers) with this weight next
        to the output loss: many more targets per input than the model's outputs; 0: outputs only
        (measured on MobileNetV2 at 3 BPW, it is what made refinement generalize; plugin README).
    """

    steps: int = attrs.field(default=100, validator=_positive_int("steps"))
    lr: float = attrs.field(default=3e-4, validator=_positive_float("lr"))
    loss: str = attrs.field(default="kl", validator=_loss_name)
    eval_every: int = attrs.field(default=10, validator=_positive_int("eval_every"))
    train_luts: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    train_scales: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    anchor: float = attrs.field(default=0.0, validator=_non_negative_float("anchor"))
    feature_weight: float = attrs.field(default=1.0, validator=_non_negative_float("feature_weight"))

    def __attrs_post_init__(self) -> None:
        if not (self.train_luts or self.train_scales):
            raise ValueError("train_luts, train_scales: at least one must be True (nothing to train)")


@define(frozen=True, kw_only=True)
class RefineResult:
    """What :func:`refine` did and what it cost.

    :param model: the refined model (a copy unless ``inplace``).
    :param refined: qualified tensor names whose records were refined.
    :param skipped: ``name -> reason`` for palettized tensors left as they were.
    :param parameters: number of trained values.
    :param steps: optimizer steps run (fewer than asked when an iterator ran out).
    :param loss_before: validation loss before refinement.
    :param loss_after: validation loss of the kept step.
    :param best_step: the kept step (0: no step improved, the model is unchanged).
    :param history: ``(step, validation loss)`` of every check, step 0 first.
    :param seconds: wall time.
    :param peak_rss_mib: the process's peak resident memory after refinement (MiB).
    """

    model: nn.Module
    refined: tuple[str, ...]
    skipped: dict[str, str]
    parameters: int
    steps: int
    loss_before: float
    loss_after: float
    best_step: int
    history: tuple[tuple[int, float], ...]
    seconds: float
    peak_rss_mib: float


class _Target:
    """One palettized tensor with trainable LUT (in units of its max magnitude) and log-scale offsets."""

    def __init__(self, module_name: str, module: nn.Module, tensor_name: str, record: compressed.PalettizedTensor,
                 options: RefineOptions):
        self.module_name, self.module, self.tensor_name, self.record = module_name, module, tensor_name, record
        self.name = f"{module_name}.{tensor_name}" if module_name else tensor_name
        lut = record.lut.detach().float()[:, :, 0]  # (n_luts, K)
        self.unit = lut.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        self.start = lut / self.unit
        self.lut = nn.Parameter(self.start.clone(), requires_grad=options.train_luts)
        rows = record.shape[0]
        self.flat = ((torch.arange(rows) // record.group_size).reshape(-1, *([1] * (record.indices.dim() - 1)))
                     * lut.shape[1] + record.indices.long()).reshape(record.shape)
        scale = record.per_channel_scale
        self.scale = None if scale is None else scale.detach().float()
        self.log_scale = None if scale is None else nn.Parameter(torch.zeros(rows), requires_grad=options.train_scales)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.lut, self.log_scale) if p is not None and p.requires_grad]

    def moved(self) -> torch.Tensor:
        """Sum of squared moves of the trained values from their start (the trust region's penalty)."""
        total = (self.lut - self.start).square().sum() if self.lut.requires_grad else self.lut.new_zeros(())
        if self.log_scale is not None and self.log_scale.requires_grad:
            total = total + self.log_scale.square().sum()
        return total

    def weight(self) -> torch.Tensor:
        dense = (self.lut * self.unit).reshape(-1)[self.flat]
        if self.scale is not None:
            factor = self.scale * self.log_scale.exp()
            dense = dense * factor.reshape(-1, *([1] * (dense.dim() - 1)))
        return dense

    def commit(self) -> None:
        """Write the trained values into the record and the module's tensor."""
        with torch.no_grad():
            lut = (self.lut * self.unit).unsqueeze(-1).to(self.record.lut.dtype)
            scale = None if self.scale is None else (self.scale * self.log_scale.exp()).to(
                self.record.per_channel_scale.dtype)
        compressed.apply(self.module, self.tensor_name, attrs.evolve(self.record, lut=lut, per_channel_scale=scale))


class _Features:
    """Forward hooks that record the outputs of the refined layers in the model and in the reference."""

    def __init__(self, model: nn.Module, reference: nn.Module, module_names: Sequence[str]):
        self.student: dict[str, torch.Tensor] = {}
        self.teacher: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in module_names:
            try:
                fp32 = reference.get_submodule(name)
            except AttributeError:
                raise ValueError(f"reference: has no module {name!r} (feature_weight matches each refined "
                                 "layer to the reference's layer of the same name)") from None
            self.handles.append(model.get_submodule(name).register_forward_hook(self._keep(self.student, name)))
            self.handles.append(fp32.register_forward_hook(self._keep(self.teacher, name)))

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], name: str):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                store[name] = output
        return hook

    def loss(self) -> torch.Tensor:
        """Mean over layers of ``|student - teacher|^2 / |teacher|^2``; clears what was recorded."""
        parts = [(self.student[n] - t).square().sum() / t.square().sum().clamp_min(1e-12)
                 for n, t in self.teacher.items() if n in self.student]
        self.student.clear()
        self.teacher.clear()
        return torch.stack(parts).mean() if parts else torch.zeros(())  # no refined layer ran: nothing to match

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _unsupported(record: Any) -> Optional[str]:
    if not isinstance(record, compressed.PalettizedTensor):
        return f"{type(record).__name__} records are not refined"
    if record.cluster_dim != 1:
        return "vector palettization (cluster_dim > 1)"
    if record.axis != 0:
        return "LUTs grouped along the input axis"
    if record.lut_quant is not None:
        return "quantized LUT (lut_qspec)"
    if record.outliers is not None:
        return "sparse outliers"
    return None


def _as_args(batch: Any) -> tuple[Any, ...]:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def refine(model: nn.Module, reference: nn.Module, data: Iterable[Any], validation: Sequence[Any] = (), *,
           options: Optional[RefineOptions] = None, inplace: bool = False) -> RefineResult:
    """Fit the LUT entries and per-channel scales of palettized ``model`` to ``reference``'s outputs.

    :param model: a palettized model (records attached by any palettizer; a
        recipe applied by mixed precision).
    :param reference: the uncompressed model it was made from.
    :param data: calibration batches (tensors or tuples of positional inputs). A
        sequence (list, tuple) is cycled for :attr:`RefineOptions.steps` steps and the
        reference's outputs on it are computed once; an iterator (e.g.
        :func:`~bitsmith_refine.augment.augmented_views`) gives a fresh batch every step,
        and training ends early if it runs out.
    :param validation: batches scored every :attr:`RefineOptions.eval_every` steps to
        keep the best step; empty: ``data`` itself (no held-out check; a sequence only).
    :param options: :class:`RefineOptions` (default ones when ``None``).
    :param inplace: refine ``model`` itself instead of a copy.
    :raises ValueError: no batch given, no validation for an iterator, or ``model`` has
        no palettized tensor it can refine.
    """
    options = RefineOptions() if options is None else options
    if not isinstance(options, RefineOptions):
        raise TypeError(f"options: expected RefineOptions, got {type(options).__name__}")
    stream = data if isinstance(data, Iterator) else None
    batches = [] if stream is not None else [_as_args(b) for b in data]
    if stream is None and not batches:
        raise ValueError("data: at least one calibration batch is needed")
    checks = [_as_args(b) for b in validation] or batches
    if not checks:
        raise ValueError("validation: batches are needed when data is an iterator (it cannot be replayed)")
    start = time.perf_counter()
    model = model if inplace else copy.deepcopy(model)
    targets, skipped = [], {}
    for module_name, module, tensor_name, record in compressed.iter_records(model):
        reason = _unsupported(record)
        if reason is None:
            targets.append(_Target(module_name, module, tensor_name, record, options))
        elif isinstance(record, (compressed.PalettizedTensor, compressed.QuantizedTensor)):
            skipped[f"{module_name}.{tensor_name}" if module_name else tensor_name] = reason
    if not targets:
        raise ValueError(f"model: no palettized tensor to refine ({len(skipped)} skipped: "
                         f"{sorted(set(skipped.values())) or 'no compressed records'})")
    features = (_Features(model, reference, list(dict.fromkeys(t.module_name for t in targets)))
                if options.feature_weight else None)
    loss_fn = LOSSES[options.loss]
    params = [p for t in targets for p in t.parameters()]
    optimizer = torch.optim.Adam(params, lr=options.lr)

    def run(args: tuple[Any, ...]) -> torch.Tensor:
        weights = {t.name: t.weight() for t in targets}
        return torch.func.functional_call(model, weights, args, strict=False)

    def teach(args: tuple[Any, ...]) -> torch.Tensor:
        with torch.no_grad():  # not inference mode: the MSE loss keeps its target for backward
            return reference(*args)

    def step_loss(args: tuple[Any, ...], target: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(target, run(args))
        if features is not None:
            loss = loss + options.feature_weight * features.loss()
        if options.anchor:
            loss = loss + options.anchor * sum(t.moved() for t in targets)
        return loss

    def validate() -> float:
        with torch.no_grad():
            return sum(loss_fn(ref, run(b)).item() for ref, b in zip(check_teacher, checks)) / len(checks)

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    was_training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]  # no gradients for what is not trained
    for p in frozen:
        p.requires_grad_(False)
    try:
        # the reference's outputs: once for a replayed sequence (unless its layers' outputs are matched too)
        fixed = [teach(b) for b in batches] if stream is None and features is None else None
        check_teacher = fixed if fixed is not None and checks is batches else [teach(b) for b in checks]
        if features is not None:
            features.teacher.clear()
        state = snapshot()
        best = loss_before = validate()
        best_step = steps_run = 0
        history = [(0, loss_before)]
        for step in range(1, options.steps + 1):
            if stream is not None:
                batch = next(stream, None)
                if batch is None:
                    break
                args = _as_args(batch)
            else:
                args = batches[(step - 1) % len(batches)]
            target = teach(args) if fixed is None else fixed[(step - 1) % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            step_loss(args, target).backward()
            optimizer.step()
            steps_run = step
            if step % options.eval_every == 0 or step == options.steps:
                current = validate()
                history.append((step, current))
                if current < best:
                    best, best_step, state = current, step, snapshot()
        if steps_run and steps_run % options.eval_every and steps_run != options.steps:  # the stream ran out
            current = validate()
            history.append((steps_run, current))
            if current < best:
                best, best_step, state = current, steps_run, snapshot()
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
        if features is not None:
            features.remove()
    if best_step:  # otherwise the records stay exactly as they were
        with torch.no_grad():
            for p, kept in zip(params, state):
                p.copy_(kept)
        for t in targets:
            t.commit()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return RefineResult(model=model, refined=tuple(t.name for t in targets), skipped=skipped,
                        parameters=sum(p.numel() for p in params), steps=steps_run, loss_before=loss_before,
                        loss_after=best, best_step=best_step, history=tuple(history),
                        seconds=time.perf_counter() - start, peak_rss_mib=peak)
