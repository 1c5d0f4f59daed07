"""augmented_views: fresh, deterministic, strongly varied views of a few photos."""

from __future__ import annotations

import pytest
import torch

from bitsmith_refine import AugmentOptions, augmented_views

PLAIN = AugmentOptions(flip=0.0, jitter=0.0, grayscale=0.0, blur=0.0)


def _photo(seed: int, h: int = 40, w: int = 60) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_every_batch_covers_every_photo_in_order() -> None:
    red, blue = torch.zeros(3, 30, 50), torch.zeros(3, 50, 30)
    red[0], blue[2] = 0.8, 0.6
    batch = next(augmented_views([red, blue], batch_size=5, size=16, options=PLAIN))
    assert batch.shape == (5, 3, 16, 16)
    expected = torch.stack([red[:, :16, :16], blue[:, :16, :16]] * 3)[:5]  # photo i % 2, a constant one stays so
    assert torch.allclose(batch, expected, atol=1e-6)


def test_same_seed_same_stream_and_each_batch_is_new() -> None:
    photos = [_photo(1), _photo(2)]
    a, b = augmented_views(photos, batch_size=4, size=12, seed=3), augmented_views(photos, batch_size=4, size=12, seed=3)
    first, second = next(a), next(a)
    assert torch.equal(first, next(b)) and torch.equal(second, next(b))
    assert not torch.equal(first, second)
    assert not torch.equal(first, next(augmented_views(photos, batch_size=4, size=12, seed=4)))
    assert first.min() >= 0 and first.max() <= 1


def test_grayscale_flip_and_normalize() -> None:
    photo = _photo(1)
    gray = next(augmented_views([photo], batch_size=3, size=10, options=AugmentOptions(
        area=(1.0, 1.0), flip=0.0, jitter=0.0, grayscale=1.0, blur=0.0)))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    whole = AugmentOptions(area=(1.0, 1.0), flip=0.0, jitter=0.0, grayscale=0.0, blur=0.0)
    plain = next(augmented_views([photo], batch_size=1, size=10, options=whole))
    flipped = next(augmented_views([photo], batch_size=1, size=10, options=AugmentOptions(
        area=(1.0, 1.0), flip=1.0, jitter=0.0, grayscale=0.0, blur=0.0)))
    assert torch.allclose(flipped, plain.flip(-1))
    blurred = next(augmented_views([photo], batch_size=1, size=10, options=AugmentOptions(
        area=(1.0, 1.0), flip=0.0, jitter=0.0, grayscale=0.0, blur=1.0)))
    assert blurred.std() < 0.8 * plain.std() and abs(blurred.mean() - plain.mean()) < 0.02  # smoother, same light
    shifted = next(augmented_views([photo], batch_size=1, size=10, options=whole, normalize=lambda x: x * 2 - 1))
    assert torch.allclose(shifted, plain * 2 - 1)


def test_bad_input_is_refused_on_the_call() -> None:
    photo = _photo(1)
    for kwargs, message in (({"images": []}, "images: at least one photo"),
                            ({"images": [photo[0]]}, r"images\[0\]: expected a float \(3, H, W\) tensor, got \(40, 60\)"),
                            ({"images": [photo * 255]}, r"images\[0\]: pixels must lie in \[0, 1\]"),
                            ({"images": [photo], "batch_size": 0}, "batch_size: expected a positive integer, got 0"),
                            ({"images": [photo], "size": 2.5}, "size: expected a positive integer")):
        with pytest.raises(ValueError, match=message):
            augmented_views(**kwargs)
    with pytest.raises(TypeError, match="options: expected AugmentOptions"):
        augmented_views([photo], options={"flip": 1.0})
    for kwargs, message in (({"area": (0.0, 1.0)}, "area: expected"), ({"area": (0.9, 0.5)}, "area: expected"),
                            ({"flip": 1.5}, "flip: expected a probability"), ({"jitter": -0.1}, "jitter: expected"),
                            ({"grayscale": True}, "grayscale: expected a probability")):
        with pytest.raises(ValueError, match=message):
            AugmentOptions(**kwargs)
