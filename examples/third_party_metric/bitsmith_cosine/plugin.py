"""A third-party sensitivity metric: cosine similarity of the model outputs (``metric="cosine"``).

``score`` is the mean cosine similarity between each sample's reference and compressed
output (1 is identical); ``to_distortion`` is ``1 - score``, which adds up roughly
across layers compressed independently; ``from_distortion`` inverts it, so recipes
predict the whole model's cosine (``InvertibleMetric``).
"""

from __future__ import annotations

import bitsmith


class CosineMetric:
    """Mean per-sample cosine similarity (``SensitivityMetric`` + ``InvertibleMetric``)."""

    higher_is_better = True
    unit = ""

    def score(self, reference, output) -> float:
        """Mean cosine similarity of the flattened per-sample outputs."""
        import torch

        ref = torch.as_tensor(reference).float().reshape(len(reference), -1)
        out = torch.as_tensor(output).float().reshape(len(output), -1)
        return float(torch.nn.functional.cosine_similarity(ref, out, dim=1).mean())

    def to_distortion(self, score: float) -> float:
        """``1 - score``, never negative."""
        return max(0.0, 1.0 - score)

    def from_distortion(self, distortion: float) -> float:
        """Inverse of :meth:`to_distortion`."""
        return 1.0 - distortion


@bitsmith.hookimpl
def sensitivity_metric(register):
    """Register ``"cosine"``."""
    register("cosine", CosineMetric())
