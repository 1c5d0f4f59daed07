"""Per-weight sensitivities: the diagonal of the Fisher information, from squared gradients.

Memory: every sensitivity lives in **one** flat fp32 buffer holding exactly one
value per compressed weight (the per-tensor sensitivities are views into it), so the
calibration never needs more than one fp32 copy of the compressed parameters on top
of the model. Squared gradients are added to it in place by a
``post_accumulate_grad`` hook on each compressed parameter, which then frees that
parameter's ``.grad``: gradients never pile up across parameters or samples, and
parameters that are not compressed do not get gradients at all during calibration.
With a ``path`` the buffer is a memory-mapped ``.npy`` file (``fisher.npy``, plus
``meta.json``) so the operating system, not the process, holds it, and a later run
(another candidate config, another bit width) reuses it without touching data.
Both files are written through :mod:`bitsmith.atomic`; ``meta.json`` holds the
sha256 of ``fisher.npy``, checked on every load, so a damaged or edited file is
refused (and :class:`~bitsmith_sensitive_kmeans.SKMPalettizer` recomputes it with a
warning on the ``bitsmith.cache`` logger, as the core's caches do).

Estimator: by default each sample gets its own backward pass (batches are split
into single samples), so the buffer holds the mean over samples of the per-sample
squared gradient, the diagonal empirical Fisher. This costs one forward/backward
per sample but only the memory of a batch of one, so it is always affordable in
memory; ``per_sample=False`` (or batches that cannot be split along a first
dimension) squares one gradient per batch instead: fewer passes, a coarser
estimate. Only the relative size of sensitivities within a tensor matters to the
weighted k-means, so the overall scale is irrelevant.

Default loss (no ``loss_fn``): the model's own outputs are the target, so no labels
are needed. The plain KL (or MSE) to the model's own outputs has a zero gradient
at the unmodified weights; its *curvature* is what says how much perturbing a
weight moves the outputs, and the Fisher estimates exactly that curvature from
squared gradients: for logits (a 2-D output, or an output with a ``logits``
attribute) the logits are projected on a random direction whose covariance is
``diag(p) - p p^T`` (:func:`fisher_loss`), so E[g^2] is the diagonal Hessian of
KL(p_ref || p), the same expectation as drawing labels from the model's own softmax
but without the heavy tail of rare labels; for any other output, a standard normal
direction ``e`` is drawn and ``sum(output * e)`` is back-propagated (E[g^2] =
diagonal Gauss-Newton of the MSE to the reference output). Draws come from a seeded
generator, so results are reproducible.

Temperature: by default ``p`` is the softmax of the logits divided by 2
(:data:`DEFAULT_TEMPERATURE`), as in distillation. At temperature 1 a well-trained
classifier is so confident on most calibration samples that nearly all of the
curvature comes from its few least-confident samples, and the sensitivities change a
lot with the calibration set; softening spreads the curvature over many samples. On
the digits CNN of the benchmark (8 calibration sets/seeds), temperature 2 makes
sensitive k-means beat plain k-means in held-out KL in 8/8 cases at 2 and at 3 bits,
against 8/8 and 2/8 at temperature 1 (``benchmarks/algorithms_bench.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitsmith import atomic
from bitsmith.mixed_precision.inputs import to_device, weights_device
from bitsmith.progress import progress_bar

DEFAULT_TEMPERATURE = 2.0
"""Softmax temperature of the default loss on logits (see the module docstring)."""

SCHEMA_VERSION = 2
"""Version of the on-disk sensitivity format (``meta.json`` ``schema``; 2 added ``sha256``)."""

DATA_FILE = "fisher.npy"
META_FILE = "meta.json"

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class Sensitivity:
    """Per-weight sensitivities of named tensors, stored in one flat fp32 buffer.

    ``sens[name]`` is a view shaped like the tensor; :attr:`nbytes` is the size of
    the single buffer; :attr:`num_samples` how many samples were averaged;
    :attr:`path` the directory it lives in (``None``: in memory).
    """

    def __init__(self, flat: torch.Tensor, layout: Sequence[tuple[str, tuple[int, ...]]], *, num_samples: int = 0,
                 passes: int = 0, per_sample: bool = True, loss: str = "", fingerprint: str = "",
                 path: Optional[Path] = None):
        self.flat = flat
        self.layout = [(name, tuple(shape)) for name, shape in layout]
        self.num_samples, self.passes, self.per_sample = num_samples, passes, per_sample
        self.loss, self.fingerprint, self.path = loss, fingerprint, path
        self._views: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape in self.layout:
            n = math.prod(shape)
            self._views[name] = flat[offset:offset + n].view(shape)
            offset += n
        if offset != flat.numel():
            raise ValueError(f"layout covers {offset} values but the buffer holds {flat.numel()}")

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._views[name]
        except KeyError:
            raise KeyError(f"no sensitivity for {name!r}; computed for: {', '.join(self._views) or 'nothing'}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._views

    def names(self) -> list[str]:
        """Tensor names, in buffer order."""
        return list(self._views)

    @property
    def nbytes(self) -> int:
        """Bytes of the one buffer (4 per compressed weight)."""
        return self.flat.numel() * self.flat.element_size()

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, sensitivity view)`` pairs."""
        return iter(self._views.items())

    def _meta(self, sha256: str) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "complete": True, "num_samples": self.num_samples,
                "passes": self.passes, "per_sample": self.per_sample, "loss": self.loss,
                "fingerprint": self.fingerprint, "dtype": "float32", "sha256": sha256,
                "tensors": [{"name": n, "shape": list(s)} for n, s in self.layout]}

    def save(self, path: Union[str, Path]) -> Path:
        """Write to directory ``path`` (``fisher.npy`` + ``meta.json`` with its sha256, atomically); returns it.

        An existing result in ``path`` is replaced (its ``meta.json`` first removed, so
        a crash part-way leaves no pair of files that claim to belong together).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.path is not None and self.path.resolve() == path.resolve():
            _flush(self.flat)
        else:
            (path / META_FILE).unlink(missing_ok=True)
            with atomic.temp_path(path / DATA_FILE, overwrite=True) as tmp:
                np.save(tmp, self.flat.detach().cpu().numpy())
        write_meta(path, self._meta(file_digest(path / DATA_FILE)))
        return path

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"Sensitivity({len(self.layout)} tensors, {self.flat.numel()} weights, {self.num_samples} samples{where})"


def _flush(flat: torch.Tensor) -> None:
    base = getattr(flat, "_bitsmith_memmap", None)
    if base is not None:
        base.flush()


def file_digest(path: Path) -> str:
    """sha256 (hex) of a file's bytes, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    """Write ``meta.json`` into directory ``path`` atomically (replacing the previous one)."""
    atomic.write_text(path / META_FILE, json.dumps(meta, indent=1), overwrite=True)


def fingerprint(tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    """A cheap identity of named weights (names, shapes, dtypes, sums): detects a sensitivity file for another model.

    Computed on the CPU one tensor at a time, so a model on a GPU and its CPU copy have the same fingerprint.
    """
    h = hashlib.sha256()
    for name, t in tensors:
        t64 = t.detach().to("cpu", torch.float64)  # summed on the CPU: the same value for weights on any device
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{t64.sum().item():.12e}|{t64.pow(2).sum().item():.12e}\n".encode())
    return h.hexdigest()[:32]


def load_sensitivity(path: Union[str, Path]) -> Sensitivity:
    """Load a saved :class:`Sensitivity` (memory-mapped copy-on-write: the file is never modified).

    Raises :class:`FileNotFoundError` when ``path`` holds no ``meta.json``, and
    :class:`ValueError` naming the file and the problem when the result cannot be
    trusted: ``fisher.npy`` whose sha256 differs from the one in ``meta.json``
    (damaged or edited), an unreadable or malformed ``meta.json``, another schema,
    an unfinished calibration, or data that does not fit the recorded layout.
    """
    path = Path(path)
    meta_file, data_file = path / META_FILE, path / DATA_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path}: no {META_FILE}; not a sensitivity directory")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_file}: unreadable ({exc}); recompute it") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA_VERSION:
        schema = meta.get("schema") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_file}: schema {schema!r} is not supported (expected {SCHEMA_VERSION})")
    if not meta.get("complete"):
        raise ValueError(f"{meta_file}: calibration did not finish; recompute it")
    try:
        actual = file_digest(data_file)
    except OSError as exc:
        raise ValueError(f"{data_file}: unreadable ({exc.strerror or exc}); recompute it") from None
    if actual != meta.get("sha256"):
        raise ValueError(f"{data_file}: sha256 {actual[:16]}... does not match the {str(meta.get('sha256'))[:16]}... "
                         f"recorded in {META_FILE}: the file is damaged or was edited; recompute it")
    try:
        flat = torch.from_numpy(np.load(data_file, mmap_mode="c"))
        layout = [(t["name"], tuple(t["shape"])) for t in meta["tensors"]]
        return Sensitivity(flat, layout, num_samples=meta["num_samples"], passes=meta["passes"],
                           per_sample=meta["per_sample"], loss=meta["loss"], fingerprint=meta["fingerprint"],
                           path=path)
    except (KeyError, TypeError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: malformed sensitivity result ({type(exc).__name__}: {exc}); recompute it") from None


class FisherAccumulator:
    """Adds squared gradients of named parameters into one flat fp32 buffer, in place, via backward hooks.

    Use as a context manager around the backward passes: hooks are installed on
    entry and removed on exit; each hook adds ``grad**2`` to the parameter's slice
    of the buffer and drops ``.grad``. ``path`` memory-maps the buffer to a file.
    """

    def __init__(self, params: Sequence[tuple[str, nn.Parameter]], path: Optional[Union[str, Path]] = None):
        if not params:
            raise ValueError("params: nothing to compute sensitivities for (the config compresses no tensor)")
        self.params = list(params)
        total = sum(p.numel() for _, p in self.params)
        devices = {p.device for _, p in self.params}
        self.path = None if path is None else Path(path)
        self._writer: Optional[contextlib.AbstractContextManager[Path]] = None
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            # A fresh file (bitsmith.atomic), renamed over fisher.npy only when complete: a crash leaves the
            # previous result intact, and a Sensitivity still mapping the previous file never sees it change.
            self._writer = atomic.temp_path(self.path / DATA_FILE, overwrite=True)
            self._partial = self._writer.__enter__()
            try:
                mm = np.lib.format.open_memmap(self._partial, mode="w+", dtype=np.float32, shape=(total,))
            except BaseException:
                self.discard()
                raise
            flat = torch.from_numpy(mm)
            flat._bitsmith_memmap = mm  # keep the mapping alive and flushable
        else:
            device = devices.pop() if len(devices) == 1 else torch.device("cpu")
            flat = torch.zeros(total, dtype=torch.float32, device=device)
        self.sensitivity = Sensitivity(flat, [(n, tuple(p.shape)) for n, p in self.params], path=self.path)
        self.passes = 0
        self._handles: list[Any] = []

    def _hook(self, buffer: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            grad = param.grad
            if grad is not None:
                g = grad.detach().to(device=buffer.device, dtype=torch.float32)
                buffer.addcmul_(g, g)
            param.grad = None

        return hook

    def __enter__(self) -> "FisherAccumulator":
        for name, p in self.params:
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook(self.sensitivity[name])))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def finish(self, num_samples: int, *, per_sample: bool, loss: str, fingerprint: str) -> Sensitivity:
        """Turn the sums into means over the backward passes (in place); on disk, commit ``fisher.npy`` + ``meta.json``."""
        if self.passes:
            self.sensitivity.flat.div_(self.passes)
        s = self.sensitivity
        s.num_samples, s.passes, s.per_sample, s.loss, s.fingerprint = num_samples, self.passes, per_sample, loss, fingerprint
        if self.path is not None and self._writer is not None:
            _flush(s.flat)
            sha256 = file_digest(self._partial)
            (self.path / META_FILE).unlink(missing_ok=True)
            writer, self._writer = self._writer, None
            writer.__exit__(None, None, None)  # fsync and rename onto fisher.npy
            write_meta(self.path, s._meta(sha256))
        return s

    def discard(self) -> None:
        """Remove the partial file of an interrupted calibration (the previous result, if any, stays)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            stop = RuntimeError("sensitivity calibration interrupted")
            writer.__exit__(type(stop), stop, None)  # atomic.temp_path removes its temporary folder


# --------------------------------------------------------------------------- batches


def batch_size(batch: Any) -> Optional[int]:
    """Leading dimension shared by every tensor of ``batch`` (tensor, tuple/list, dict); ``None`` if not splittable."""
    sizes = {t.shape[0] for t in _leaves(batch) if t.dim() > 0}
    return sizes.pop() if len(sizes) == 1 else None


def _leaves(batch: Any) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _leaves(v)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            yield from _leaves(v)


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of every tensor in ``batch`` (non-tensors and 0-d tensors are kept as is)."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.dim() > 0 else batch
    if isinstance(batch, Mapping):
        items = {k: slice_batch(v, start, stop) for k, v in batch.items()}
        return items if type(batch) is dict else type(batch)(items)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(slice_batch(v, start, stop) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(slice_batch(v, start, stop) for v in batch)
    return batch


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on a batch of inputs: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


# --------------------------------------------------------------------------- default loss


def primary_output(output: Any) -> tuple[torch.Tensor, bool]:
    """The tensor the default loss uses and whether it is logits: ``.logits``/``["logits"]``, else the first tensor."""
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits, True
    if isinstance(output, torch.Tensor):
        return output, output.dim() == 2 and output.shape[-1] > 1
    if isinstance(output, Mapping):
        output = list(output.values())
    for item in output if isinstance(output, (list, tuple)) else ():
        if isinstance(item, torch.Tensor) and item.is_floating_point():
            return item, item.dim() == 2 and item.shape[-1] > 1
    raise TypeError(f"the default sensitivity loss needs a tensor output (or .logits); got {type(output).__name__}; "
                    f"pass loss_fn=")


def fisher_loss(output: Any, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> torch.Tensor:
    """The label-free loss whose squared gradients estimate the Fisher of the model's own outputs.

    Logits ``z`` (divided by ``temperature``): ``sum(z * v)`` with
    ``v = sqrt(p) * e - p * (sqrt(p) . e)``, ``e ~ N(0, 1)``, ``p = softmax(z)``, so that
    ``E[v v^T] = diag(p) - p p^T``, the Hessian of ``KL(p_ref || p)`` in the logits.
    Other outputs: ``sum(output * e)``. See the module docstring.
    """
    out, is_logits = primary_output(output)
    if is_logits:
        flat = out.reshape(-1, out.shape[-1]).float() / temperature
        probs = torch.softmax(flat.detach(), dim=-1)
        root = probs.sqrt()
        noise = torch.randn(flat.shape, generator=generator, dtype=torch.float32).to(flat.device)
        direction = root * noise - probs * (root * noise).sum(-1, keepdim=True)
        return (flat * direction).sum()
    noise = torch.randn(out.shape, generator=generator, dtype=torch.float32).to(out.device)
    return (out.float() * noise).sum()


# --------------------------------------------------------------------------- the calibration loop


def _units(data: Iterable[Any], num_samples: int, per_sample: bool) -> Iterator[tuple[Any, int]]:
    """Yield ``(batch, samples)`` for each backward pass until ``num_samples`` samples are used."""
    seen = 0
    warned = False
    for batch in data:
        if seen >= num_samples:
            return
        n = batch_size(batch)
        if n is None:
            if per_sample and not warned:
                warnings.warn("sensitivity: a batch cannot be split along a first dimension; using one gradient "
                              "per batch for such batches", stacklevel=3)
                warned = True
            seen += 1
            yield batch, 1
            continue
        take = min(n, num_samples - seen)
        if per_sample:
            for i in range(take):
                yield slice_batch(batch, i, i + 1), 1
        else:
            yield (slice_batch(batch, 0, take) if take < n else batch), take
        seen += take


def compute_fisher(model: nn.Module, params: Sequence[tuple[str, nn.Parameter]], data: Iterable[Any],
                   loss_fn: Optional[LossFn] = None, *, num_samples: int = 128, per_sample: bool = True,
                   path: Optional[Union[str, Path]] = None, seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
                   progress: Optional[bool] = None) -> Sensitivity:
    """Accumulate the diagonal Fisher of ``params`` (named parameters of ``model``) over ``data``.

    :param data: an iterable of batches (a DataLoader or a list); each batch is what
        ``loss_fn(model, batch)`` takes, or, for the default loss, the model's
        input (tensor, tuple of positional inputs, dict of keyword inputs).
    :param loss_fn: ``loss_fn(model, batch) -> scalar``; ``None``: :func:`fisher_loss`
        of the model's output.
    :param num_samples: samples to use (across batches).
    :param per_sample: one backward pass per sample (default) or per batch.
    :param path: directory to memory-map the buffer into and save it to.
    :param seed: seed of the default loss's random directions.
    :param temperature: softmax temperature of the default loss on logits (see the
        module docstring); ignored with a ``loss_fn``.

    The model is run in eval mode with gradients only for ``params``; its modes,
    ``requires_grad`` flags and existing ``.grad`` values are restored afterwards.
    Device: the passes run where the model's weights are; every tensor of a batch
    (inputs, and labels for a ``loss_fn``) is moved there first (a model spread over
    several devices gets its batches as given). The in-memory buffer lives on the
    parameters' device; with ``path`` it is a file, so on the CPU.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    generator = torch.Generator().manual_seed(seed)
    loss_name = (f"fisher of the model's own outputs (temperature {temperature})" if loss_fn is None
                 else getattr(loss_fn, "__qualname__", repr(loss_fn)))
    if loss_fn is None:
        def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
            return fisher_loss(call_model(m, batch), generator, temperature)

    target_ids = {id(p) for _, p in params}
    all_params = list(model.parameters())
    saved_flags = [(p, p.requires_grad) for p in all_params]
    saved_grads = [(p, p.grad) for _, p in params]
    was_training = {m: m.training for m in model.modules()}
    print_name = fingerprint(params)
    home = weights_device(model)
    acc = FisherAccumulator(params, path)
    used, finished = 0, False
    try:
        for p in all_params:
            p.requires_grad_(id(p) in target_ids)
        for _, p in params:
            p.grad = None
        model.eval()
        bar = progress_bar(total=num_samples, desc="sensitivity", unit="sample", enabled=progress)
        with acc, bar:
            for unit, n in _units(data, num_samples, per_sample):
                loss = loss_fn(model, unit if home is None else to_device(unit, home))
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                                    f"{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}")
                if not loss.requires_grad:
                    raise ValueError("loss_fn returned a loss that does not depend on the compressed weights")
                loss.backward()
                acc.passes += 1
                used += n
                bar.update(n)
        finished = True
    finally:
        if not finished:
            acc.discard()
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        for p, grad in saved_grads:
            p.grad = grad
        for m, mode in was_training.items():
            m.training = mode
    if used == 0:
        acc.discard()
        raise ValueError("data: no batch was produced; sensitivities need at least one calibration sample")
    return acc.finish(used, per_sample=per_sample, loss=loss_name, fingerprint=print_name)
