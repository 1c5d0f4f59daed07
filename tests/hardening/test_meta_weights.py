"""Weights on the meta device are refused up front, naming them, not a crash deep inside a kernel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitsmith.errors import CompressionError
from bitsmith.mixed_precision import compute_sensitivity
from bitsmith.palettization import KMeansPalettizer

pytest.importorskip("bitsmith_kmeans")


def _meta_model() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_palettizing_meta_weights_names_every_one():
    with pytest.raises(CompressionError, match=r"cannot palettize: weights on the meta device .*\(0\.weight, 2\.weight\)"):
        KMeansPalettizer(_meta_model()).prepare(progress=False)


def test_scoring_meta_weights_is_refused_before_any_work(tmp_path):
    with pytest.raises(CompressionError, match=r"cannot score sensitivity: .*meta device.*0\.weight"):
        compute_sensitivity(_meta_model(), [torch.randn(2, 16)], cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_materialized_model_palettizes():
    model = _meta_model().to_empty(device="cpu")
    for p in model.parameters():
        nn.init.normal_(p)
    prepared = KMeansPalettizer(model).prepare(progress=False)
    assert torch.isfinite(prepared(torch.randn(2, 16))).all()
