"""Vector k-means: seeding rules, exactness on few rows, weights, empty clusters, correctness on blobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitsmith_kmeans import vector
from bitsmith_kmeans.cluster import kmeans


def blobs(seed=0, per=150):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    x = torch.cat([c + 0.3 * torch.randn(per, 2, generator=gen) for c in centers])
    return x, torch.arange(4).repeat_interleave(per)


def test_same_seed_same_result_and_seeds_matter():
    x = torch.randn(3000, 4, generator=torch.Generator().manual_seed(1))
    a, b = kmeans(x, 16, seed=7), kmeans(x, 16, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = kmeans(x, 16, seed=8)
    assert not torch.equal(a[0], c[0])


def test_seed_none_draws_from_the_global_numpy_and_torch_generators():
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    np.random.seed(42)
    torch.manual_seed(42)
    first = kmeans(x, 16)
    np.random.seed(42)
    torch.manual_seed(42)
    again = kmeans(x, 16)
    unseeded = kmeans(x, 16)  # generators moved on
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], unseeded[0])
    np.random.seed(42)
    torch.manual_seed(43)  # both generators take part
    assert not torch.equal(kmeans(x, 16)[0], first[0])


def test_recovers_well_separated_blobs_exactly():
    x, truth = blobs()
    centroids, labels = kmeans(x, 4, seed=0)
    # same partition up to renaming, centroids are the blob means
    pairs = set(zip(labels.tolist(), truth.tolist()))
    assert len(pairs) == 4
    for c in range(4):
        assert torch.allclose(centroids[c], x[labels == c].double().mean(0).float(), atol=1e-6)


def test_few_distinct_rows_are_kept_exactly():
    rows = torch.tensor([[0.1, 0.2], [0.3, -0.7], [1.5, 2.5]])
    x = rows[torch.tensor([0, 1, 2, 1, 0, 2, 2] * 20)]
    centroids, labels = kmeans(x, 16, seed=0)
    assert centroids.shape == (3, 2)
    assert torch.equal(centroids[labels], x)


def test_minus_zero_equals_plus_zero():
    x = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [2.0, 2.0]])
    centroids, labels = kmeans(x, 4, seed=0)
    assert centroids.shape[0] == 2 and labels[0] == labels[1]


def test_sample_weights_pull_centroids():
    x, _ = blobs(per=50)
    w = torch.ones(x.shape[0])
    w[0] = 1e6  # one heavy point in the first blob
    centroids, labels = kmeans(x, 4, sample_weight=w, seed=0)
    assert torch.allclose(centroids[labels[0]], x[0], atol=1e-4)
    plain, _ = kmeans(x, 4, seed=0)
    assert not torch.allclose(plain[labels[0]], x[0], atol=1e-3)


def test_zero_weight_rows_are_labelled_but_do_not_move_centroids():
    x, _ = blobs(per=40)
    x = torch.cat([x, torch.tensor([[100.0, 100.0]])])
    w = torch.ones(x.shape[0])
    w[-1] = 0.0
    centroids, labels = kmeans(x, 4, sample_weight=w, seed=3)
    assert centroids.shape[0] == 4
    assert float(centroids.abs().max()) < 7  # the far point does not get its own centroid
    assert int(labels[-1]) == int(torch.cdist(x[-1:], centroids).argmin())


def test_empty_clusters_are_reseeded_at_the_farthest_points(monkeypatch):
    x, truth = blobs(per=60)

    def duplicated_seeds(xx, w, k, generator):  # two identical seeds: one of them starts empty
        picks = torch.tensor([0, 0, 60, 120])
        d2 = torch.cdist(xx, xx[picks]).pow(2)
        return xx[picks].clone(), d2.argmin(1), False

    monkeypatch.setattr(vector, "_kmeans_pp", duplicated_seeds)
    centroids, labels = vector.kmeans_nd(x, 4, None, torch.Generator().manual_seed(0))
    assert centroids.shape == (4, 2)
    assert len(set(zip(labels.tolist(), truth.tolist()))) == 4  # the blob without a seed got one


def test_no_empty_clusters_when_k_is_close_to_n():
    x = torch.randn(70, 3, generator=torch.Generator().manual_seed(5))
    centroids, labels = kmeans(x, 64, seed=1)
    assert centroids.shape[0] <= 64
    assert torch.unique(labels).numel() == centroids.shape[0]
    assert int(labels.max()) < centroids.shape[0]


def test_chunked_distances_give_the_same_result(monkeypatch):
    x = torch.randn(6000, 2, generator=torch.Generator().manual_seed(6))
    whole = kmeans(x, 64, seed=0)
    monkeypatch.setattr(vector, "_DIST_ELEMENTS", 64 * 500)  # 500-row chunks
    chunked = kmeans(x, 64, seed=0)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert whole[0].shape == (64, 2)
    sse = (x - whole[0][whole[1]]).pow(2).sum().item()
    assert sse < 0.05 * x.pow(2).sum().item()


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.tensor([[1.0, float("nan")], [0.0, 0.0]])), "NaN or infinite"),
    (dict(sample_weight=torch.tensor([1.0, -1.0])), "non-negative"),
    (dict(sample_weight=torch.tensor([1.0, float("inf")])), "NaN or infinite"),
])
def test_bad_vector_input_is_rejected(bad, match):
    args = dict(x=torch.tensor([[1.0, 2.0], [3.0, 4.0]]), sample_weight=None) | bad
    with pytest.raises(ValueError, match=match):
        kmeans(args["x"], 2, sample_weight=args["sample_weight"], seed=0)
