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
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from attrs import define, field
from torch import nn

__all__ = ["FidelityTask", "TASKS", "efficientnet_lite0_task", "minilm_task", "mobilenet_v2_task"]


def top1_agreement(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class equals the reference's."""
    return (output.argmax(-1) == reference.argmax(-1)).float().mean().item()


def mean_cosine(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Mean cosine similarity of corresponding rows."""
    return F.cosine_similarity(output.float(), reference.float(), dim=-1).mean().item()


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
    reference: torch.Tensor = field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "reference", self.outputs(self.model))

    def outputs(self, model: nn.Module) -> torch.Tensor:
        """``model``'s output on the held-out batch."""
        with torch.inference_mode():
            return model(*self.heldout)

    def fidelity(self, model: nn.Module) -> float:
        """How closely ``model`` (a compressed copy) reproduces the fp32 outputs on held-out data."""
        return self.compare(self.reference, self.outputs(model))


def mobilenet_v2_task(calibration_crops: int = 32, heldout_crops: int = 64) -> FidelityTask:
    """MobileNetV2 (ImageNet weights); crops of disjoint calibration and held-out photos; top-1 agreement."""
    from .data import image_crops
    from .mobilenet_v2 import load_mobilenet_v2

    return FidelityTask(
        name="mobilenet_v2",
        title=f"MobileNetV2 (ImageNet), {calibration_crops} calibration / {heldout_crops} held-out crops",
        model=load_mobilenet_v2().eval(), calibration=[image_crops(calibration_crops, split="calibration")],
        heldout=(image_crops(heldout_crops, split="heldout"),), measure="top-1 agreement",
        sensitivity_metric="kl", compare=top1_agreement)


def efficientnet_lite0_task(calibration_crops: int = 32, heldout_crops: int = 64) -> FidelityTask:
    """EfficientNet-Lite0 (ImageNet weights, inputs in [-1, 1]); same photos as MobileNetV2; top-1 agreement."""
    from .data import image_crops
    from .efficientnet_lite import load_efficientnet_lite0

    def crops(n: int, split: str) -> torch.Tensor:
        return image_crops(n, split=split, normalization="inception")

    return FidelityTask(
        name="efficientnet_lite0",
        title=f"EfficientNet-Lite0 (ImageNet), {calibration_crops} calibration / {heldout_crops} held-out crops",
        model=load_efficientnet_lite0().eval(), calibration=[crops(calibration_crops, "calibration")],
        heldout=(crops(heldout_crops, "heldout"),), measure="top-1 agreement", sensitivity_metric="kl",
        compare=top1_agreement)


def minilm_task(calibration_sentences: int = 60) -> FidelityTask:
    """all-MiniLM-L6-v2; a seeded split of :data:`~bitsmith_zoo.minilm.SENTENCES`; mean cosine of embeddings.

    Palettizers that learn from data also see each calibration sentence joined with
    another one (``calibration_data``): new contexts for the same tokens, twice the
    activations for GPTQ's second moments, nothing from the held-out sentences.
    """
    from .minilm import load_minilm, sentence_split, tokenize

    calibration, heldout = sentence_split(calibration_sentences)
    n = len(calibration)
    joined = [f"{calibration[i]} {calibration[(i + 7) % n]}" for i in range(n)]

    def batch(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokenize(sentences)
        return tokens["input_ids"], tokens["attention_mask"]

    return FidelityTask(
        name="minilm",
        title=f"all-MiniLM-L6-v2, {len(calibration)} calibration / {len(heldout)} held-out sentences",
        model=load_minilm(attn_implementation="eager"), calibration=[batch(calibration)], heldout=batch(heldout),
        measure="mean cosine", sensitivity_metric="mse", compare=mean_cosine,
        calibration_data=[batch(calibration), batch(joined)])


TASKS: dict[str, Callable[..., FidelityTask]] = {
    "mobilenet_v2": mobilenet_v2_task,
    "minilm": minilm_task,
    "efficientnet_lite0": efficientnet_lite0_task,
}
"""Task builders by name."""
