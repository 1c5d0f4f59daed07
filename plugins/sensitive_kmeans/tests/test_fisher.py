"""Diagonal Fisher accumulation: values vs manual autograd, memory bound, state restored, on-disk reuse."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsmith_sensitive_kmeans.fisher import (
    batch_size,
    compute_fisher,
    fisher_loss,
    load_sensitivity,
    slice_batch,
)


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def tiny_data():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(3, 4, generator=gen), torch.randn(3, 2, generator=gen)) for _ in range(2)]


def mse_sum(model, batch):
    x, t = batch
    return F.mse_loss(model(x), t, reduction="sum")


def targets(model):
    return [("0.weight", model[0].weight), ("2.weight", model[2].weight)]


def test_per_sample_fisher_matches_manual_autograd():
    model, data = tiny_model(), tiny_data()
    sens = compute_fisher(model, targets(model), data, mse_sum, num_samples=5, per_sample=True)
    xs = torch.cat([x for x, _ in data])[:5]
    ts = torch.cat([t for _, t in data])[:5]
    expected = [torch.zeros_like(p) for _, p in targets(model)]
    for i in range(5):
        grads = torch.autograd.grad(mse_sum(model, (xs[i:i + 1], ts[i:i + 1])), [p for _, p in targets(model)])
        for acc, g in zip(expected, grads):
            acc += g * g
    assert sens.num_samples == 5 and sens.passes == 5
    for (name, _), exp in zip(targets(model), expected):
        torch.testing.assert_close(sens[name], exp / 5, rtol=1e-5, atol=1e-8)


def test_per_batch_fisher_matches_manual_autograd():
    model, data = tiny_model(), tiny_data()
    sens = compute_fisher(model, targets(model), data, mse_sum, num_samples=5, per_sample=False)
    units = [data[0], (data[1][0][:2], data[1][1][:2])]  # the second batch is cut to reach 5 samples
    expected = [torch.zeros_like(p) for _, p in targets(model)]
    for unit in units:
        grads = torch.autograd.grad(mse_sum(model, unit), [p for _, p in targets(model)])
        for acc, g in zip(expected, grads):
            acc += g * g
    assert sens.num_samples == 5 and sens.passes == 2 and not sens.per_sample
    for (name, _), exp in zip(targets(model), expected):
        torch.testing.assert_close(sens[name], exp / 2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("out_features", [2, 1])
def test_default_loss_is_reproducible_and_matches_manual(out_features):
    """Logits (2-D, >1 class) and the Gaussian branch (a single output) against a manual loop with the same draws."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, out_features))
    xs = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    sens = compute_fisher(model, targets(model), [xs[:2], xs[2:]], None, num_samples=4, seed=7, temperature=3.0)
    gen = torch.Generator().manual_seed(7)
    expected = [torch.zeros_like(p) for _, p in targets(model)]
    for i in range(4):
        grads = torch.autograd.grad(fisher_loss(model(xs[i:i + 1]), gen, 3.0), [p for _, p in targets(model)])
        for acc, g in zip(expected, grads):
            acc += g * g
    for (name, _), exp in zip(targets(model), expected):
        torch.testing.assert_close(sens[name], exp / 4, rtol=1e-5, atol=1e-10)
        assert float(exp.sum()) > 0
    again = compute_fisher(model, targets(model), [xs[:2], xs[2:]], None, num_samples=4, seed=7, temperature=3.0)
    assert torch.equal(again.flat, sens.flat)


def test_default_logits_direction_has_the_kl_curvature_as_covariance():
    """d loss / d logits = v with E[v v^T] = diag(p) - p p^T, the Hessian of KL(p_ref || p) in the logits."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]], requires_grad=True)
    p = torch.softmax(logits.detach(), -1)[0]
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([torch.autograd.grad(fisher_loss(logits, gen), logits)[0][0] for _ in range(20000)])
    covariance = draws.T @ draws / draws.shape[0]
    torch.testing.assert_close(covariance, torch.diag(p) - torch.outer(p, p), atol=0.01, rtol=0.0)


def test_one_fp32_buffer_grads_freed_and_state_restored():
    model, data = tiny_model(), tiny_data()
    model.train()
    model[0].bias.requires_grad_(False)
    sentinel = torch.full_like(model[2].weight, 3.0)
    model[2].weight.grad = sentinel
    seen_grads = []

    def loss_fn(m, batch):
        seen_grads.append([p.grad is None for p in m.parameters()])
        assert not m.training
        return mse_sum(m, batch)

    sens = compute_fisher(model, targets(model), data, loss_fn, num_samples=6)
    n = model[0].weight.numel() + model[2].weight.numel()
    assert sens.flat.numel() == n and sens.flat.dtype == torch.float32
    assert sens.nbytes == 4 * n
    storages = {sens[name].untyped_storage().data_ptr() for name, _ in targets(model)}
    assert storages == {sens.flat.untyped_storage().data_ptr()}
    assert all(all(flags) for flags in seen_grads[1:]), "a gradient survived a backward pass"
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]
    assert model[2].weight.grad is sentinel and model[0].weight.grad is None
    assert model[0].bias.grad is None and model[2].bias.grad is None


def test_saved_to_disk_and_loaded(tmp_path):
    model, data = tiny_model(), tiny_data()
    path = tmp_path / "fisher"
    sens = compute_fisher(model, targets(model), data, mse_sum, num_samples=6, path=path)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["complete"] and meta["schema"] == 2 and meta["num_samples"] == 6
    assert [t["name"] for t in meta["tensors"]] == ["0.weight", "2.weight"]
    on_disk = np.load(path / "fisher.npy")
    assert on_disk.dtype == np.float32 and on_disk.size == sens.flat.numel()
    loaded = load_sensitivity(path)
    assert torch.equal(loaded.flat, sens.flat) and loaded.fingerprint == sens.fingerprint
    loaded["0.weight"].zero_()  # copy-on-write: the file is not modified
    assert np.array_equal(np.load(path / "fisher.npy"), on_disk)


def test_batch_helpers():
    batch = {"x": torch.zeros(4, 2), "mask": (torch.ones(4), 3)}
    assert batch_size(batch) == 4
    part = slice_batch(batch, 1, 3)
    assert part["x"].shape == (2, 2) and part["mask"][0].shape == (2,) and part["mask"][1] == 3
    assert batch_size((torch.zeros(3), torch.zeros(2))) is None
    assert batch_size("text") is None


def test_unsplittable_batches_fall_back_to_one_gradient_per_batch():
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    batch = {"a": torch.randn(3, 4, generator=gen), "b": torch.randn(2, 4, generator=gen)}

    def loss_fn(m, b):
        return m(b["a"]).pow(2).sum() + m(b["b"]).pow(2).sum()

    with pytest.warns(UserWarning, match="one gradient per batch"):
        sens = compute_fisher(model, targets(model), [batch, batch], loss_fn, num_samples=2)
    assert sens.passes == 2 and sens.num_samples == 2


def test_bad_losses_and_empty_data_fail_clearly():
    model, data = tiny_model(), tiny_data()
    with pytest.raises(TypeError, match="scalar"):
        compute_fisher(model, targets(model), data, lambda m, b: m(b[0]), num_samples=2)
    with pytest.raises(ValueError, match="does not depend"):
        compute_fisher(model, targets(model), data, lambda m, b: torch.tensor(1.0), num_samples=2)
    with pytest.raises(ValueError, match="no batch"):
        compute_fisher(model, targets(model), [], mse_sum)
    assert all(p.grad is None for p in model.parameters())


def _damage(file, offset_from_end: int = 8) -> None:
    """Overwrite 4 bytes of a .npy file's data (past its header) with other bytes."""
    raw = bytearray(file.read_bytes())
    pos = len(raw) - offset_from_end
    raw[pos:pos + 4] = bytes(255 - b for b in raw[pos:pos + 4])
    file.write_bytes(bytes(raw))


def test_the_saved_file_is_digest_checked(tmp_path):
    model, data = tiny_model(), tiny_data()
    path = tmp_path / "fisher"
    sens = compute_fisher(model, targets(model), data, mse_sum, num_samples=6, path=path)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["sha256"] == hashlib.sha256((path / "fisher.npy").read_bytes()).hexdigest()
    assert sorted(p.name for p in path.iterdir()) == ["fisher.npy", "meta.json"]  # no temporary left behind
    values = sens.flat.clone()
    _damage(path / "fisher.npy")
    assert not np.array_equal(np.load(path / "fisher.npy"), values.numpy())  # the damage changes values
    with pytest.raises(ValueError, match=r"fisher.npy: sha256 [0-9a-f]{16}\.\.\. does not match .* damaged or was edited"):
        load_sensitivity(path)
    (path / "meta.json").write_text('{"schema": 2, "compl')
    with pytest.raises(ValueError, match=r"meta.json: unreadable"):
        load_sensitivity(path)


def test_save_elsewhere_and_an_interrupted_calibration_keeps_the_previous_result(tmp_path):
    model, data = tiny_model(), tiny_data()
    sens = compute_fisher(model, targets(model), data, mse_sum, num_samples=6)  # in memory
    path = sens.save(tmp_path / "saved")
    assert torch.equal(load_sensitivity(path).flat, sens.flat)
    before = (path / "fisher.npy").read_bytes(), (path / "meta.json").read_text()
    passes = []

    def failing(m, batch):
        passes.append(1)
        if len(passes) == 3:
            raise KeyboardInterrupt
        return mse_sum(m, batch)

    with pytest.raises(KeyboardInterrupt):
        compute_fisher(model, targets(model), data, failing, num_samples=6, path=path)
    assert ((path / "fisher.npy").read_bytes(), (path / "meta.json").read_text()) == before
    assert sorted(p.name for p in path.iterdir()) == ["fisher.npy", "meta.json"]
    assert torch.equal(load_sensitivity(path).flat, sens.flat)
