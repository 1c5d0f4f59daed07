"""Exact 1-D k-means: optimality against brute force, fp16 semantics, weights, determinism, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bitsmith_kmeans.scalar import kmeans_1d, optimal_boundaries


def weighted_sse(x, w, centroids, labels):
    w = np.ones_like(x, dtype=np.float64) if w is None else np.asarray(w, dtype=np.float64)
    return float((w * (np.asarray(x, np.float64) - centroids.astype(np.float64)[labels]) ** 2).sum())


def best_over_all_labelings(x, w, k):
    """Exhaustive: every assignment of the n points to k labels, optimal (weighted-mean) centroids."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    best = np.inf
    for labels in itertools.product(range(k), repeat=x.size):
        lab = np.array(labels)
        sse = 0.0
        for c in range(k):
            m = (lab == c) & (w > 0)
            if m.any():
                mean = (w[m] * x[m]).sum() / w[m].sum()
                sse += (w[m] * (x[m] - mean) ** 2).sum()
        best = min(best, sse)
    return best


def best_contiguous(v, w, k):
    """Exhaustive over the contiguous partitions of sorted distinct values into k groups."""
    n = v.size
    best = np.inf
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        sse = 0.0
        for a, b in zip(bounds[:-1], bounds[1:]):
            mean = (w[a:b] * v[a:b]).sum() / w[a:b].sum()
            sse += (w[a:b] * (v[a:b] - mean) ** 2).sum()
        best = min(best, sse)
    return best


def fp16_exact_values(rng, n, spread=40):
    """Values exactly representable in fp16 (multiples of 1/16), with duplicates."""
    return (rng.integers(-spread, spread, n) / 16).astype(np.float32)


@pytest.mark.parametrize("seed", range(40))
def test_matches_exhaustive_search_over_all_labelings(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    k = int(rng.integers(2, 4))
    x = fp16_exact_values(rng, n, spread=12)
    w = rng.random(n) + 0.05 if seed % 2 else np.ones(n)
    centroids, labels = kmeans_1d(x, k, w if seed % 2 else None)
    got = weighted_sse(x, w, centroids, labels)
    assert got == pytest.approx(best_over_all_labelings(x, w, k), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(60))
def test_matches_exhaustive_contiguous_partitions_with_weights_and_duplicates(seed):
    rng = np.random.default_rng(100 + seed)
    x = fp16_exact_values(rng, int(rng.integers(8, 40)), spread=int(rng.integers(6, 30)))
    w = rng.integers(0, 4, x.size).astype(np.float64) if seed % 3 == 0 else rng.random(x.size)
    values = np.unique(x).astype(np.float64)
    weight = np.array([w[x == v].sum() for v in values])
    positive = weight > 0
    k = int(rng.integers(2, min(6, int(positive.sum())) + 1)) if positive.sum() >= 2 else 1
    centroids, labels = kmeans_1d(x, k, w)
    assert centroids.size <= k
    expected = best_contiguous(values[positive], weight[positive], k) if positive.sum() > k else 0.0
    assert weighted_sse(x, w, centroids, labels) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(30))
def test_optimal_boundaries_match_brute_force_on_arbitrary_floats(seed):
    rng = np.random.default_rng(500 + seed)
    n = int(rng.integers(3, 13))
    k = int(rng.integers(1, n))
    v = np.sort(rng.normal(size=n) * rng.choice([1e-3, 1.0, 1e3]))
    w = rng.random(n) + 1e-3
    bounds = optimal_boundaries(v, w, k)
    assert bounds[0] == 0 and bounds[-1] == n and np.all(np.diff(bounds) > 0) and bounds.size == k + 1
    sse = sum(float((w[a:b] * (v[a:b] - (w[a:b] * v[a:b]).sum() / w[a:b].sum()) ** 2).sum())
              for a, b in zip(bounds[:-1], bounds[1:]))
    assert sse == pytest.approx(best_contiguous(v, w, k), rel=1e-9, abs=1e-15)


def test_solution_is_a_fixed_point_of_lloyd_on_a_large_input():
    rng = np.random.default_rng(7)
    x = np.clip(np.round(rng.normal(size=200_000) * 512) / 1024, -8, 8).astype(np.float32)  # fp16-exact
    centroids, labels = kmeans_1d(x, 16)
    means = np.array([x[labels == c].astype(np.float64).mean() for c in range(centroids.size)])
    assert np.allclose(centroids, means, rtol=1e-6)
    # a Lloyd step (nearest centroid, then means) leaves an optimal partition unchanged
    nearest = np.abs(x[:, None].astype(np.float64) - means[None, :]).argmin(1)
    assert np.array_equal(nearest, labels)
    assert np.all(np.diff(centroids) > 0)
    assert np.bincount(labels, minlength=16).min() > 0


def test_histogram_and_unique_paths_agree():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=20_000) * 0.05).astype(np.float32)
    w = rng.random(x.size)
    for weights in (None, w):
        a = kmeans_1d(x, 16, weights, histogram_min_size=0)
        b = kmeans_1d(x, 16, weights, histogram_min_size=10**9)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_deterministic():
    x = (np.random.default_rng(1).normal(size=50_000)).astype(np.float32)
    a, b = kmeans_1d(x, 64), kmeans_1d(x.copy(), 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_few_distinct_values_are_kept_exactly_even_when_not_fp16_representable():
    x = np.array([0.1, 0.3, 0.1, 0.7, 0.3] * 40, dtype=np.float32)
    centroids, labels = kmeans_1d(x, 16)
    assert centroids.tolist() == np.unique(x).tolist()
    assert np.array_equal(centroids[labels], x)


def test_values_closer_than_fp16_resolution_share_a_centroid():
    # 1 + 2**-12 rounds to 1.0 in fp16 (spacing 2**-10): two fp16 values, three float32 values
    x = np.array([1.0, 1.0 + 2**-12, 5.0, 5.0], dtype=np.float32)
    centroids, labels = kmeans_1d(x, 2)
    assert centroids.tolist() == [1.0, 5.0]
    assert labels.tolist() == [0, 0, 1, 1]


def test_plus_and_minus_zero_are_one_value():
    x = np.array([-0.0, 0.0, 1.0, 2.0, 3.0] * 3, dtype=np.float32)
    centroids, labels = kmeans_1d(x, 2, histogram_min_size=0)
    assert labels[0] == labels[1]
    centroids, labels = kmeans_1d(x, 4)
    assert centroids.size == 4 and labels[0] == labels[1]


@pytest.mark.parametrize("power", [-30, -12, 20, 40])
def test_power_of_two_scaling_is_equivariant(power):
    # a tensor far outside the fp16 range is rescaled by a power of two first: same partition
    x = (np.random.default_rng(4).normal(size=5000) * 0.5).astype(np.float32)
    x[0] = 1.5  # max |x| in [1, 2): rounded to fp16 as is
    ref_c, ref_l = kmeans_1d(x, 16)
    c, lab = kmeans_1d(x * np.float32(2.0**power), 16)
    assert np.array_equal(lab, ref_l)
    assert np.array_equal(c, ref_c * np.float32(2.0**power))
    assert np.isfinite(c).all()


def test_sample_weights_move_centroids_and_scale_invariance():
    x = np.array([0.0, 1.0, 2.0, 10.0, 11.0], dtype=np.float32)
    heavy = np.array([1.0, 1.0, 100.0, 1.0, 1.0])
    c, lab = kmeans_1d(x, 2, heavy)
    assert c[0] == pytest.approx((0 + 1 + 200) / 102)
    c2, lab2 = kmeans_1d(x, 2, heavy * 8.0)
    assert np.array_equal(c, c2) and np.array_equal(lab, lab2)


def test_zero_weight_values_go_to_the_nearest_centroid_and_all_zero_means_unweighted():
    x = np.array([0.0, 0.125, 10.0, 10.125, 5.25], dtype=np.float32)
    w = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    c, lab = kmeans_1d(x, 2, w)
    assert c.tolist() == [0.0625, 10.0625]
    assert lab.tolist() == [0, 0, 1, 1, 1]  # 5.25 is nearer to 10.0625 than to 0.0625
    a, b = kmeans_1d(x, 2, np.zeros(5)), kmeans_1d(x, 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_k_one_and_constant_tensor():
    x = np.array([1.0, 2.0, 4.0], dtype=np.float32)
    c, lab = kmeans_1d(x, 1)
    assert c.tolist() == pytest.approx([7 / 3]) and lab.tolist() == [0, 0, 0]
    c, lab = kmeans_1d(np.zeros(10, np.float32), 4)
    assert c.tolist() == [0.0] and lab.tolist() == [0] * 10


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.array([1.0, np.nan])), "NaN or infinite"),
    (dict(x=np.array([1.0, np.inf])), "NaN or infinite"),
    (dict(x=np.array([], np.float32)), "empty"),
    (dict(k=0), "k: expected a positive integer"),
    (dict(k=True), "k: expected a positive integer"),
    (dict(sample_weight=np.ones(2)), "expected 3 weights"),
    (dict(sample_weight=np.array([1.0, -1.0, 1.0])), "non-negative"),
    (dict(sample_weight=np.array([1.0, np.nan, 1.0])), "NaN or infinite"),
])
def test_bad_input_is_rejected(bad, match):
    args = dict(x=np.array([1.0, 2.0, 3.0], np.float32), k=2, sample_weight=None) | bad
    with pytest.raises(ValueError, match=match):
        kmeans_1d(args["x"], args["k"], args["sample_weight"])


def test_optimal_boundaries_rejects_out_of_range_sizes():
    with pytest.raises(ValueError, match="1 <= k < n"):
        optimal_boundaries(np.arange(3.0), np.ones(3), 3)


def test_weights_spanning_many_orders_of_magnitude_do_not_break_the_dp():
    # Input-energy weights (GPTQ's weighted LUTs) can differ by 1e30 between weights; a weight
    # below the prefix sums' rounding error used to make a DP segment weigh 0 (ZeroDivisionError).
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000).astype(np.float32)
    w = np.exp(rng.uniform(-80, 0, size=x.size))
    centroids, labels = kmeans_1d(x, 16, w)
    assert centroids.shape == (16,) and np.all(np.diff(centroids) > 0)
    assert labels.min() == 0 and labels.max() == 15
    assert x.min() <= centroids[0] and centroids[-1] <= x.max()
