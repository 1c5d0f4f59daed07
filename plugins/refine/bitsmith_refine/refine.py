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
from typing import Any, Iterable, Optional, Sequence

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


def _loss_name(_inst: Any, _attr: Any, value: Any) -> None:
    if value not in LOSSES:
        raise ValueError(f"loss: {value!r} is not one of {', '.join(sorted(LOSSES))}")


@define(frozen=True, kw_only=True)
class RefineOptions:
    """How :func:`refine` trains.

    :param steps: optimizer steps (one calibration batch each, cycling).
    :param lr: Adam learning rate, relative: LUTs are trained in units of their own
        largest magnitude and scales in log space, so ``1e-3`` moves a value by about 0.1%.
    :param loss: ``"kl"`` (logits) or ``"mse"`` (embeddings); see :data:`LOSSES`.
    :param eval_every: steps between validation checks (the best checked step is kept).
    :param train_luts: train LUT entries.
    :param train_scales: train per-channel scales (records that have them).
    """

    steps: int = attrs.field(default=100, validator=_positive_int("steps"))
    lr: float = attrs.field(default=1e-3, validator=_positive_float("lr"))
    loss: str = attrs.field(default="kl", validator=_loss_name)
    eval_every: int = attrs.field(default=10, validator=_positive_int("eval_every"))
    train_luts: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    train_scales: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))

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
    :param loss_before: validation loss before refinement.
    :param loss_after: validation loss of the kept step.
    :param best_step: the kept step (0: no step improved, the model is unchanged).
    :param seconds: wall time.
    :param peak_rss_mib: the process's peak resident memory after refinement (MiB).
    """

    model: nn.Module
    refined: tuple[str, ...]
    skipped: dict[str, str]
    parameters: int
    loss_before: float
    loss_after: float
    best_step: int
    seconds: float
    peak_rss_mib: float


class _Target:
    """One palettized tensor with trainable LUT (in units of its max magnitude) and log-scale offsets."""

    def __init__(self, name: str, module: nn.Module, tensor_name: str, record: compressed.PalettizedTensor,
                 options: RefineOptions):
        self.name, self.module, self.tensor_name, self.record = name, module, tensor_name, record
        lut = record.lut.detach().float()[:, :, 0]  # (n_luts, K)
        self.unit = lut.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        self.lut = nn.Parameter(lut / self.unit, requires_grad=options.train_luts)
        rows = record.shape[0]
        self.flat = ((torch.arange(rows) // record.group_size).reshape(-1, *([1] * (record.indices.dim() - 1)))
                     * lut.shape[1] + record.indices.long()).reshape(record.shape)
        scale = record.per_channel_scale
        self.scale = None if scale is None else scale.detach().float()
        self.log_scale = None if scale is None else nn.Parameter(torch.zeros(rows), requires_grad=options.train_scales)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.lut, self.log_scale) if p is not None and p.requires_grad]

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
    :param data: calibration batches (tensors or tuples of positional inputs),
        cycled for :attr:`RefineOptions.steps` steps.
    :param validation: batches scored every :attr:`RefineOptions.eval_every` steps to
        keep the best step; empty: ``data`` itself (no held-out check).
    :param options: :class:`RefineOptions` (default ones when ``None``).
    :param inplace: refine ``model`` itself instead of a copy.
    :raises ValueError: no batch given, or ``model`` has no palettized tensor it can refine.
    """
    options = RefineOptions() if options is None else options
    if not isinstance(options, RefineOptions):
        raise TypeError(f"options: expected RefineOptions, got {type(options).__name__}")
    batches = [_as_args(b) for b in data]
    if not batches:
        raise ValueError("data: at least one calibration batch is needed")
    checks = [_as_args(b) for b in validation] or batches
    start = time.perf_counter()
    model = model if inplace else copy.deepcopy(model)
    targets, skipped = [], {}
    for module_name, module, tensor_name, record in compressed.iter_records(model):
        name = f"{module_name}.{tensor_name}" if module_name else tensor_name
        reason = _unsupported(record)
        if reason is None:
            targets.append(_Target(name, module, tensor_name, record, options))
        elif isinstance(record, (compressed.PalettizedTensor, compressed.QuantizedTensor)):
            skipped[name] = reason
    if not targets:
        raise ValueError(f"model: no palettized tensor to refine ({len(skipped)} skipped: "
                         f"{sorted(set(skipped.values())) or 'no compressed records'})")
    loss_fn = LOSSES[options.loss]
    with torch.no_grad():  # not inference mode: the MSE loss keeps its target for backward
        teacher = [reference(*b) for b in batches]
        check_teacher = teacher if checks is batches else [reference(*b) for b in checks]
    params = [p for t in targets for p in t.parameters()]
    optimizer = torch.optim.Adam(params, lr=options.lr)

    def run(args: tuple[Any, ...]) -> torch.Tensor:
        weights = {t.name: t.weight() for t in targets}
        return torch.func.functional_call(model, weights, args, strict=False)

    def validate() -> float:
        with torch.no_grad():
            return sum(loss_fn(ref, run(b)).item() for ref, b in zip(check_teacher, checks)) / len(checks)

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    was_training = model.training
    model.eval()
    state = snapshot()
    best = loss_before = validate()
    best_step = 0
    frozen = [p for p in model.parameters() if p.requires_grad]  # no gradients for what is not trained
    for p in frozen:
        p.requires_grad_(False)
    try:
        for step in range(1, options.steps + 1):
            i = (step - 1) % len(batches)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(teacher[i], run(batches[i]))
            loss.backward()
            optimizer.step()
            if step % options.eval_every == 0 or step == options.steps:
                current = validate()
                if current < best:
                    best, best_step, state = current, step, snapshot()
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    if best_step:  # otherwise the records stay exactly as they were
        with torch.no_grad():
            for p, kept in zip(params, state):
                p.copy_(kept)
        for t in targets:
            t.commit()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return RefineResult(model=model, refined=tuple(t.name for t in targets), skipped=skipped,
                        parameters=sum(p.numel() for p in params), loss_before=loss_before, loss_after=best,
                        best_step=best_step, seconds=time.perf_counter() - start, peak_rss_mib=peak)
