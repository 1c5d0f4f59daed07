"""Tests of bitsmith_zoo.data: offline photos, preprocessing, disjoint deterministic crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitsmith_zoo import data


def test_splits_use_disjoint_source_images() -> None:
    assert set(data.CALIBRATION_IMAGES).isdisjoint(data.HELDOUT_IMAGES)
    assert set(data.CALIBRATION_IMAGES).isdisjoint(data.BROAD_IMAGES)
    assert {"chelsea", "coffee"} <= set(data.HELDOUT_IMAGES) <= set(data.BROAD_IMAGES)
    assert len(set(data.BROAD_IMAGES)) == len(data.BROAD_IMAGES) >= 12
    assert data.image_names() == data.CALIBRATION_IMAGES + data.BROAD_IMAGES
    assert data.image_names("broad") == data.BROAD_IMAGES
    with pytest.raises(ValueError, match="'broad'"):
        data.image_names("test")


@pytest.mark.parametrize("name", data.image_names())
def test_every_image_loads_offline_as_rgb(name: str) -> None:
    img = data.load_image(name)
    assert img.dtype == torch.float32 and img.dim() == 3 and img.shape[0] == 3
    assert min(img.shape[1:]) >= 128
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05


def test_grayscale_binary_and_rgba_photos_become_rgb() -> None:
    for name in ("camera", "horse", "brick"):  # grayscale / binary: the channel repeated
        img = data.load_image(name)
        assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])
    assert set(data.load_image("horse").unique().tolist()) == {0.0, 1.0}
    gift = data.load_image("gift")  # RGBA, transparent corners composited over white
    assert torch.equal(gift[:, 0, 0], torch.ones(3)) and not torch.equal(gift[0], gift[2])
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 255)
    assert data._to_rgb_uint8(rgba).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    with pytest.raises(ValueError, match="uint8"):
        data._to_rgb_uint8(np.zeros((2, 2), dtype=np.float32))


def test_broad_crops_cycle_through_sixteen_photos_with_their_sources() -> None:
    sources = data.crop_sources(40, "broad")
    assert sources[:16] == data.BROAD_IMAGES and sources[16] == "chelsea" and len(sources) == 40
    x = data.image_crops(20, "broad", size=64)
    assert x.shape == (20, 3, 64, 64)
    assert not torch.equal(x[16], data.image_crops(17, "heldout", size=64)[16])  # own crop geometry


def test_no_two_source_images_are_the_same() -> None:
    def thumb(name: str) -> torch.Tensor:  # standardized 16x16 thumbnail (textures share a mean, not a layout)
        t = torch.nn.functional.interpolate(data.load_image(name)[None], size=(16, 16), mode="area").flatten()
        return (t - t.mean()) / t.std()

    thumbs = torch.stack([thumb(n) for n in data.image_names()])
    correlation = thumbs @ thumbs.T / thumbs.shape[1]
    correlation.fill_diagonal_(0.0)
    assert correlation.max() < 0.8  # measured: 0.55 at most (china vs camera)


@pytest.mark.parametrize("split", ["calibration", "heldout"])
def test_image_crops_shape_and_normalization(split: str) -> None:
    x = data.image_crops(64, split=split)
    assert x.shape == (64, 3, 224, 224) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # ImageNet-normalized pixels: roughly centred, within the normalized [0, 1] range.
    assert -2.2 < x.min() and x.max() < 2.7
    assert abs(float(x.mean())) < 1.0 and 0.5 < float(x.std()) < 1.6
    # Crops are varied (no duplicates).
    flat = x.flatten(1)
    dist = torch.cdist(flat[:, ::97], flat[:, ::97])
    dist.fill_diagonal_(float("inf"))
    assert dist.min() > 1e-3


def test_image_crops_are_deterministic_and_prefix_stable() -> None:
    a = data.image_crops(24, "calibration", seed=3)
    b = data.image_crops(24, "calibration", seed=3)
    assert torch.equal(a, b)
    assert torch.equal(data.image_crops(12, "calibration", seed=3), a[:12])
    c = data.image_crops(24, "calibration", seed=4)
    n_fixed = len(data.CALIBRATION_IMAGES)  # the leading center crops do not depend on the seed
    assert torch.equal(a[:n_fixed], c[:n_fixed])
    assert not torch.allclose(a[n_fixed:], c[n_fixed:])


def test_calibration_and_heldout_crops_differ() -> None:
    cal = data.image_crops(16, "calibration").flatten(1)
    held = data.image_crops(16, "heldout").flatten(1)
    assert torch.cdist(cal[:, ::61], held[:, ::61]).min() > 1e-3


def test_other_sizes_and_normalizations() -> None:
    x = data.image_crops(6, "heldout", size=96, normalization="none")
    assert x.shape == (6, 3, 96, 96) and 0.0 <= x.min() and x.max() <= 1.0
    y = data.image_crops(6, "heldout", size=96, normalization="inception")
    assert torch.allclose(y, x * 2 - 1)
    z = data.image_crops(6, "heldout", size=96)
    mean = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(z, (x - mean) / std, atol=1e-5)


def test_preprocess_matches_standard_eval_view() -> None:
    x = data.preprocess("chelsea")
    assert x.shape == (1, 3, 224, 224)
    with pytest.raises(ValueError):
        data.load_image("lena")
    with pytest.raises(ValueError):
        data.image_crops(2, split="train")  # type: ignore[arg-type]
