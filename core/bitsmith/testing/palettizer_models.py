"""Test helpers for palettizer plugins: an exact weighted 1-D k-means kernel for private registries, and a CNN trained on sklearn digits.

Shared by the sensitive k-means and DKM tests (``from bitsmith.testing import palettizer_models as helpers``).
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bitsmith


def _segment_cost(S0, S1, S2, a, b):
    """Weighted SSE of sorted points ``a .. b-1`` from prefix sums (vectorized over index arrays)."""
    s0, s1, s2 = S0[b] - S0[a], S1[b] - S1[a], S2[b] - S2[a]
    safe = np.where(s0 > 0, s0, 1.0)
    return np.maximum(s2 - np.where(s0 > 0, s1 * s1 / safe, 0.0), 0.0)


def optimal_weighted_1d(values: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Centroids of the optimal weighted 1-D k-means (DP with divide-and-conquer, vectorized per depth)."""
    v, inv = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True)
    w = np.bincount(inv, weights=np.asarray(weights, dtype=np.float64), minlength=v.size)
    n = v.size
    if n <= k:
        return v
    shift = np.average(v, weights=w) if w.sum() > 0 else v.mean()
    vc = v - shift
    S0, S1, S2 = (np.concatenate([[0.0], np.cumsum(t)]) for t in (w, w * vc, w * vc * vc))
    prev = _segment_cost(S0, S1, S2, np.zeros(n + 1, dtype=np.int64), np.arange(n + 1))
    back = [np.zeros(n + 1, dtype=np.int64)]
    for j in range(2, k + 1):
        cur, arg = np.full(n + 1, np.inf), np.zeros(n + 1, dtype=np.int64)
        segs = [(j, n, j - 1, n - 1)]  # (first i, last i, first split, last split)
        while segs:
            lo, hi, olo, ohi = (np.array(c) for c in zip(*segs))
            mid = (lo + hi) // 2
            cnt = np.minimum(ohi, mid - 1) - olo + 1
            rep: np.ndarray = np.repeat(np.arange(len(segs)), cnt)
            starts = np.repeat(olo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt) + np.arange(cnt.sum())
            vals = prev[starts] + _segment_cost(S0, S1, S2, starts, mid[rep])
            order = np.lexsort((starts, vals, rep))
            first = order[np.concatenate([[True], rep[order][1:] != rep[order][:-1]])]
            cur[mid[rep[first]]], arg[mid[rep[first]]] = vals[first], starts[first]
            best = arg[mid]
            segs = [seg for (a, b, c, d), m, s in zip(segs, mid, best)
                    for seg in ((a, m - 1, c, s), (m + 1, b, s, d)) if seg[0] <= seg[1]]
        back.append(arg)
        prev = cur
    bounds, i = [], n
    for j in range(k, 1, -1):
        s = back[j - 1][i]
        bounds.append((s, i))
        i = s
    bounds.append((0, i))
    return np.array([(S1[b] - S1[a]) / (S0[b] - S0[a]) + shift if S0[b] > S0[a] else v[a:b].mean()
                     for a, b in reversed(bounds)])


def exact_kmeans(x: torch.Tensor, k: int, *, sample_weight: Optional[torch.Tensor] = None,
                 seed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal weighted k-means of 1-D rows (stand-in for bitsmith-kmeans's exact kernel); nearest labels."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.shape[1] != 1:
        raise ValueError("exact_kmeans handles cluster_dim 1 only")
    w = np.ones(x.shape[0]) if sample_weight is None else torch.as_tensor(sample_weight).double().reshape(-1).numpy()
    c = torch.tensor(np.unique(optimal_weighted_1d(x[:, 0].double().numpy(), w, k)), dtype=torch.float32)[:, None]
    labels = (x - c.T).abs().argmin(1)
    used = torch.unique(labels)
    remap = torch.full((c.shape[0],), -1, dtype=torch.int64)
    remap[used] = torch.arange(used.numel())
    return c[used], remap[labels]


class KMeansTestPlugin:
    """Registers :func:`exact_kmeans` as "kmeans" (stand-in for bitsmith-kmeans in private registries)."""

    @bitsmith.hookimpl
    def cluster(self, register):
        register("kmeans", exact_kmeans)


class IdentityBackend:
    """An export backend that returns the model unchanged."""

    description = "identity (tests)"

    def finalize(self, model: nn.Module) -> nn.Module:
        return model


class BackendTestPlugin:
    """Registers :class:`IdentityBackend` as "identity"."""

    @bitsmith.hookimpl
    def export_backend(self, register):
        register("identity", IdentityBackend())


class DigitsCNN(nn.Module):
    """Two 3x3 convs + two linears for 8x8 digits (about 40k weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@functools.lru_cache(maxsize=None)
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: sklearn digits, 1297/500 split, pixels in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1297], y[:1297], x[1297:], y[1297:]


@functools.lru_cache(maxsize=None)
def _trained_state() -> dict:
    torch.manual_seed(0)
    model = DigitsCNN()
    x, y, _, _ = digits()
    epochs, batch = 12, 64
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * -(-x.shape[0] // batch))
    gen = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_digits_cnn() -> DigitsCNN:
    """A fresh copy of the digits CNN trained for 12 epochs (99.0% test accuracy)."""
    model = DigitsCNN()
    model.load_state_dict(_trained_state())
    return model.eval()


@torch.no_grad()
def fidelity(reference: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """KL(reference || model) averaged over samples, top-1 agreement, and accuracy on labels ``y``."""
    reference.eval(), model.eval()
    ref, out = reference(x), model(x)
    kl = F.kl_div(F.log_softmax(out, -1), F.log_softmax(ref, -1), log_target=True, reduction="batchmean").item()
    agree = (ref.argmax(-1) == out.argmax(-1)).float().mean().item()
    acc = (out.argmax(-1) == y).float().mean().item()
    return {"kl": kl, "agreement": agree, "accuracy": acc}
