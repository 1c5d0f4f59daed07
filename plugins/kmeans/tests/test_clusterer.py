"""The registered clusterer honours bitsmith's Clusterer protocol; registry wiring."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import bitsmith.plugins
from bitsmith.protocols import Clusterer, PalettizerFactory
from bitsmith.testing import check_clusterer
from bitsmith_kmeans.cluster import kmeans
from bitsmith_kmeans.palettizer import KMeansPalettizer


def test_contract():
    check_clusterer(kmeans)
    assert isinstance(kmeans, Clusterer)
    assert isinstance(KMeansPalettizer, PalettizerFactory)


def test_private_registry_provides_both_names(registry):
    assert registry.get("cluster", "kmeans") is kmeans
    assert registry.get("palettizer", "kmeans") is KMeansPalettizer
    assert registry.names("cluster") == ["kmeans"]


def test_default_registry_and_seed_import_path():
    from bitsmith.palettization import KMeansPalettizer as FromCore

    assert FromCore is KMeansPalettizer
    assert bitsmith.plugins.get("cluster", "kmeans") is kmeans
    assert bitsmith.plugins.default_registry().provider("cluster", "kmeans").dist == "bitsmith-kmeans"


def test_picklable_by_reference():
    assert pickle.loads(pickle.dumps(kmeans)) is kmeans


def test_output_types_and_accepted_inputs():
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    for arg in (x, x[:, None], torch.from_numpy(x), torch.from_numpy(x).double()[:, None]):
        centroids, labels = kmeans(arg, 4)
        assert centroids.dtype == torch.float32 and centroids.shape == (4, 1)
        assert labels.dtype == torch.int64 and labels.shape == (101,)


def test_scalar_rows_ignore_the_seed():
    x = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0))
    a, b = kmeans(x, 8, seed=1), kmeans(x, 8, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("x, k, sw, match", [
    (torch.zeros(2, 2, 2), 4, None, "expected a 2-D"),
    (torch.zeros(4, 1, dtype=torch.int64), 4, None, "expected a 2-D \\(n, d\\) float tensor"),
    (torch.zeros(0, 2), 4, None, "empty"),
    (torch.zeros(4, 1), 0, None, "k: expected a positive integer"),
    (torch.zeros(4, 1), 2.5, None, "k: expected a positive integer"),
    (torch.zeros(4, 2), 2, torch.ones(3), "expected 4 weights"),
])
def test_bad_arguments(x, k, sw, match):
    with pytest.raises(ValueError, match=match):
        kmeans(x, k, sample_weight=sw)
