"""Fidelity tasks: a real model, disjoint calibration and held-out data, and a fidelity measure.

A :class:`FidelityTask` bundles what a compression experiment on a real model needs:
the fp32 model, calibration batches (for the sensitivity stage and for palettizers
that learn from data), a held-out batch the compression never sees, and how a
compressed copy is compared with the fp32 model on it:

* :func:`mobilenet_v2_task` -- MobileNetV2 on image crops; top-1 agreement with fp32.
* :func:`minilm_task` -- all-MiniLM-L6-v2 on sentences; mean cosine similarity of the
  embeddings to fp32.
* :func:`efficientnet_lite0_task` -- EfficientNet-Lite0 on image crops; top-1 agreement.

Each task also names the sensitivity metric that tracks its fidelity measure
(KL of the logits for classifiers, MSE for unit-norm embeddings)::

    task = mobilenet_v2_task()
    table = compute_sensitivity(task.model, task.calibration, candidates, metric=task.sensitivity_metric)
    print(task.fidelity(apply_recipe(task.model, generate_recipe(table, target_bpw=4.0), table=table)))

Besides the small held-out batch, each task carries a **broad** evaluation set
(:class:`EvalSet`): for the CNNs, 256 crops of sixteen photos of varied kinds (people,
animals, objects, scenes, textures, grayscale), none of them a calibration photo; for
MiniLM, the held-out sentences plus paragraphs of Python's own documentation
(``pydoc_data.topics``, a different kind of text than the calibration sentences).
:meth:`FidelityTask.breakdown` scores a compressed copy on it per source photo/text
and, for classifiers, per fp32 confidence stratum (:data:`STRATA`), with KL next to
agreement.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from attrs import define, field
from torch import nn

__all__ = ["STRATA", "Breakdown", "EvalSet", "FidelityTask", "TASKS", "doc_paragraphs", "efficientnet_lite0_task",
           "minilm_task", "mobilenet_v2_task"]

#: fp32 top-1 probability strata of :meth:`FidelityTask.breakdown`: ``(label, low, high)``, ``low <= p < high``.
STRATA: tuple[tuple[str, float, float], ...] = (("p < 0.3", 0.0, 0.3), ("0.3 <= p < 0.6", 0.3, 0.6),
                                                ("p >= 0.6", 0.6, float("inf")))


def top1_agreement(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class equals the reference's."""
    return (output.argmax(-1) == reference.argmax(-1)).float().mean().item()


def mean_cosine(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Mean cosine similarity of corresponding rows."""
    return F.cosine_similarity(output.float(), reference.float(), dim=-1).mean().item()


def kl_rows(reference: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Per-row KL divergence (nats) of ``softmax(output)`` from ``softmax(reference)``."""
    log_p, log_q = F.log_softmax(reference.double(), -1), F.log_softmax(output.double(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)


@define(frozen=True, kw_only=True)
class EvalSet:
    """Evaluation inputs with the source (photo, text kind) of every row.

    :param name: short identifier (``"broad"``).
    :param inputs: one batch (tuple of positional inputs), rows in the order of ``sources``.
    :param sources: the source of each row (``len(sources)`` rows).
    :param description: what the data is, for reports.
    """

    name: str
    inputs: tuple[Any, ...]
    sources: tuple[str, ...]
    description: str


@define(frozen=True, kw_only=True)
class Breakdown:
    """A compressed copy's fidelity on an :class:`EvalSet`, overall and per part.

    :param measure: the task's measure over all rows (top-1 agreement, mean cosine).
    :param kl: mean KL divergence of the logits (classifiers; ``None`` otherwise).
    :param sources: ``source -> (rows, measure, mean KL or None)``.
    :param strata: ``stratum label -> (rows, measure, mean KL)`` by fp32 top-1
        probability (:data:`STRATA`; classifiers only, else empty).
    """

    measure: float
    kl: Optional[float]
    sources: dict[str, tuple[int, float, Optional[float]]]
    strata: dict[str, tuple[int, float, float]]


@define(frozen=True, kw_only=True)
class FidelityTask:
    """A real model with calibration and held-out data, and how fidelity to fp32 is measured.

    :param name: short identifier (``"mobilenet_v2"``).
    :param title: human-readable description of model and data.
    :param model: the fp32 model, in eval mode.
    :param calibration: list of batches (each a tensor or a tuple of positional
        inputs) for the sensitivity stage and for calibrated palettizers.
    :param heldout: one batch (tuple of positional inputs) never used for calibration.
    :param measure: what :meth:`fidelity` returns (``"top-1 agreement"``, ``"mean cosine"``).
    :param sensitivity_metric: the registered sensitivity metric that tracks ``measure``.
    :param compare: ``compare(reference_output, output) -> float`` (higher is better).
    :param calibration_data: batches for palettizers that learn from data (GPTQ, Sensitive
        K-Means), built from the calibration data only; ``None``: ``calibration``.
    :param broad: the broad evaluation set (:meth:`breakdown`), disjoint from calibration.
    :param classifier: outputs are logits (KL and confidence strata apply).
    :param chunk: rows per forward pass on the broad set (memory only).
    """

    name: str
    title: str
    model: nn.Module
    calibration: list[Any]
    heldout: tuple[Any, ...]
    measure: str
    sensitivity_metric: str
    compare: Callable[[torch.Tensor, torch.Tensor], float]
    calibration_data: Optional[list[Any]] = None
    broad: Optional[EvalSet] = None
    classifier: bool = True
    chunk: int = 64
    reference: torch.Tensor = field(init=False)
    broad_reference: Optional[torch.Tensor] = field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "reference", self.outputs(self.model))
        object.__setattr__(self, "broad_reference", None if self.broad is None else self.broad_outputs(self.model))

    def broad_outputs(self, model: nn.Module) -> torch.Tensor:
        """``model``'s output on the broad set, computed :attr:`chunk` rows at a time."""
        if self.broad is None:
            raise ValueError(f"task {self.name!r} has no broad evaluation set (built with broad=0?)")
        rows = len(self.broad.sources)
        with torch.inference_mode():
            parts = [model(*(x[i:i + self.chunk] for x in self.broad.inputs)) for i in range(0, rows, self.chunk)]
        return torch.cat(parts)

    def outputs(self, model: nn.Module) -> torch.Tensor:
        """``model``'s output on the held-out batch."""
        with torch.inference_mode():
            return model(*self.heldout)

    def fidelity(self, model: nn.Module) -> float:
        """How closely ``model`` (a compressed copy) reproduces the fp32 outputs on held-out data."""
        return self.compare(self.reference, self.outputs(model))

    def breakdown(self, model: nn.Module) -> Breakdown:
        """``model``'s fidelity on the broad set: overall, per source, per fp32 confidence stratum."""
        output = self.broad_outputs(model)
        reference = self.broad_reference
        kl = kl_rows(reference, output) if self.classifier else None
        names = list(dict.fromkeys(self.broad.sources))
        source = torch.tensor([names.index(s) for s in self.broad.sources])

        def part(mask: torch.Tensor) -> tuple[int, float, Optional[float]]:
            return (int(mask.sum()), self.compare(reference[mask], output[mask]),
                    None if kl is None else kl[mask].mean().item())

        per_source = {name: part(source == i) for i, name in enumerate(names)}
        strata = {}
        if self.classifier:
            confidence = reference.float().softmax(-1).amax(-1)
            for label, low, high in STRATA:
                mask = (confidence >= low) & (confidence < high)
                if mask.any():
                    strata[label] = part(mask)
        return Breakdown(measure=self.compare(reference, output), kl=None if kl is None else kl.mean().item(),
                         sources=per_source, strata=strata)


def _broad_crops(n: int, normalization: str) -> Optional[EvalSet]:
    from .data import BROAD_IMAGES, crop_sources, image_crops

    if n == 0:
        return None
    return EvalSet(name="broad", inputs=(image_crops(n, split="broad", normalization=normalization),),
                   sources=crop_sources(n, "broad"),
                   description=f"{n} crops of {min(n, len(BROAD_IMAGES))} photos not used for calibration")


def mobilenet_v2_task(calibration_crops: int = 32, heldout_crops: int = 64, broad_crops: int = 256) -> FidelityTask:
    """MobileNetV2 (ImageNet weights); crops of disjoint calibration and held-out photos; top-1 agreement.

    ``broad_crops`` crops of :data:`~bitsmith_zoo.data.BROAD_IMAGES` form the broad set (0: none).
    """
    from .data import image_crops
    from .mobilenet_v2 import load_mobilenet_v2

    return FidelityTask(
        name="mobilenet_v2",
        title=f"MobileNetV2 (ImageNet), {calibration_crops} calibration / {heldout_crops} held-out / "
              f"{broad_crops} broad crops",
        model=load_mobilenet_v2().eval(), calibration=[image_crops(calibration_crops, split="calibration")],
        heldout=(image_crops(heldout_crops, split="heldout"),), measure="top-1 agreement",
        sensitivity_metric="kl", compare=top1_agreement, broad=_broad_crops(broad_crops, "imagenet"))


def efficientnet_lite0_task(calibration_crops: int = 32, heldout_crops: int = 64,
                            broad_crops: int = 256) -> FidelityTask:
    """EfficientNet-Lite0 (ImageNet weights, inputs in [-1, 1]); same photos as MobileNetV2; top-1 agreement."""
    from .data import image_crops
    from .efficientnet_lite import load_efficientnet_lite0

    def crops(n: int, split: str) -> torch.Tensor:
        return image_crops(n, split=split, normalization="inception")

    return FidelityTask(
        name="efficientnet_lite0",
        title=f"EfficientNet-Lite0 (ImageNet), {calibration_crops} calibration / {heldout_crops} held-out / "
              f"{broad_crops} broad crops",
        model=load_efficientnet_lite0().eval(), calibration=[crops(calibration_crops, "calibration")],
        heldout=(crops(heldout_crops, "heldout"),), measure="top-1 agreement", sensitivity_metric="kl",
        compare=top1_agreement, broad=_broad_crops(broad_crops, "inception"))


def doc_paragraphs(n: int = 64, min_words: int = 25, max_words: int = 90) -> list[str]:
    """``n`` prose paragraphs of Python's own documentation (``pydoc_data.topics``, ships with Python).

    Distinct paragraphs of ``min_words``..``max_words`` words that are not indented
    (code, grammar), whitespace collapsed, spread evenly over the topics in sorted order.
    The text depends on the Python version (its documentation).
    """
    from pydoc_data.topics import topics

    paragraphs = list(dict.fromkeys(  # unique, in topic order (some topics repeat a paragraph)
        " ".join(p.split()) for key in sorted(topics) for p in re.split(r"\n\s*\n", topics[key])
        if p[:1] not in ("", " ", "\t") and min_words <= len(p.split()) <= max_words))
    if len(paragraphs) < n:
        raise ValueError(f"n: only {len(paragraphs)} documentation paragraphs qualify, asked for {n}")
    step = len(paragraphs) / n
    return [paragraphs[int(i * step)] for i in range(n)]


def minilm_task(calibration_sentences: int = 60, doc_paragraphs_n: int = 64) -> FidelityTask:
    """all-MiniLM-L6-v2; a seeded split of :data:`~bitsmith_zoo.minilm.SENTENCES`; mean cosine of embeddings.

    Palettizers that learn from data also see each calibration sentence joined with
    another one (``calibration_data``): new contexts for the same tokens, twice the
    activations for GPTQ's second moments, nothing from the held-out sentences.
    The broad set is the held-out sentences plus ``doc_paragraphs_n`` paragraphs of
    Python's documentation (:func:`doc_paragraphs`; 0: sentences only).
    """
    from .minilm import load_minilm, sentence_split, tokenize

    calibration, heldout = sentence_split(calibration_sentences)
    n = len(calibration)
    joined = [f"{calibration[i]} {calibration[(i + 7) % n]}" for i in range(n)]
    docs = doc_paragraphs(doc_paragraphs_n) if doc_paragraphs_n else []

    def batch(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokenize(sentences)
        return tokens["input_ids"], tokens["attention_mask"]

    broad = EvalSet(name="broad", inputs=batch(heldout + docs),
                    sources=("held-out sentences",) * len(heldout) + ("python docs paragraphs",) * len(docs),
                    description=f"{len(heldout)} held-out sentences + {len(docs)} paragraphs of Python's docs")
    return FidelityTask(
        name="minilm",
        title=f"all-MiniLM-L6-v2, {len(calibration)} calibration / {len(heldout)} held-out sentences / "
              f"{len(docs)} docs paragraphs",
        model=load_minilm(attn_implementation="eager"), calibration=[batch(calibration)], heldout=batch(heldout),
        measure="mean cosine", sensitivity_metric="mse", compare=mean_cosine,
        calibration_data=[batch(calibration), batch(joined)], broad=broad, classifier=False, chunk=32)


TASKS: dict[str, Callable[..., FidelityTask]] = {
    "mobilenet_v2": mobilenet_v2_task,
    "minilm": minilm_task,
    "efficientnet_lite0": efficientnet_lite0_task,
}
"""Task builders by name."""
