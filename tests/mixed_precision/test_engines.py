"""The block engine (no torch.fx) and the local engine: values, work saved, safety nets."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bitsmith.config import PalettizationSpec
from bitsmith.mixed_precision import EngineFallbackWarning, compute_sensitivity
from bitsmith.palettization import palettize_tensor
from bitsmith_metrics import PSNR

from mp_helpers import make_resnetish, quantile_clusterer


def _rows(table):
    return [(r.layer, r.candidate, r.bits, r.score) for r in table.rows]


def _count_calls(module):
    """How often ``module``'s forward really runs (a replayed call runs hooks but not forward)."""
    calls = []
    forward = module.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    module.forward = counted
    return calls


def test_block_engine_equals_naive_and_skips_the_prefix(resnetish, images, registry):
    stem_calls = _count_calls(resnetish.stem)
    head_calls = _count_calls(resnetish.head)
    block = compute_sensitivity(resnetish, images, [2, 4, "2-bit g8"], engine="block", cache_dir=None,
                                registry=registry)
    assert block.meta["engine"] == "block" and block.meta["engine_notes"] == []
    # per batch: reference + two recording passes + its own 3 candidates; later layers replay the stem's output
    assert len(stem_calls) == len(images) * (1 + 2 + 3)
    # the head runs in every pass: reference, 2 recordings, the check, and each of the 11 pairs
    assert len(head_calls) == len(images) * (1 + 2 + 1 + 11)
    naive = compute_sensitivity(make_resnetish(), images, [2, 4, "2-bit g8"], engine="naive", cache_dir=None,
                                registry=registry)
    assert _rows(block) == _rows(naive)  # bit-identical, in-place `z += y` on a replayed value included


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()  # wte and lm_head share one tensor


def _llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                      max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_block_engine_on_transformers_models(build, registry):
    model = build()
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 64, (2, 12), generator=gen)},
            {"input_ids": torch.randint(0, 64, (2, 12), generator=gen),
             "attention_mask": torch.ones(2, 12, dtype=torch.long)}]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineFallbackWarning)
        auto = compute_sensitivity(model, data, [2, 4], cache_dir=None, registry=registry)
    assert auto.meta["engine"] == "block"  # fx cannot trace it: chosen automatically
    assert "torch.fx cannot trace it" in auto.meta["engine_notes"][0]
    naive = compute_sensitivity(model, data, [2, 4], engine="naive", cache_dir=None, registry=registry)
    assert len(auto.rows) == 2 * len(auto.layers) and _rows(auto) == _rows(naive)
    assert len({r.score for r in auto.rows}) > len(auto.rows) // 2  # real, distinct scores


class CallCounter(nn.Module):
    """Output depends on how often it ran: two baseline passes disagree."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.calls


def test_block_engine_refuses_a_model_whose_passes_differ(registry):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), CallCounter(), nn.Linear(4, 2)).eval()
    with pytest.warns(EngineFallbackWarning, match="block engine not used.*did not reproduce the reference"):
        table = compute_sensitivity(model, torch.randn(3, 4), [2], engine="block", cache_dir=None, registry=registry)
    assert table.meta["engine"] == "naive"


def test_local_engine_scores_each_layer_on_its_own_output(resnetish, images, registry):
    local = compute_sensitivity(resnetish, images, [2, 4], engine="local", cache_dir=None, registry=registry)
    naive = compute_sensitivity(resnetish, images, [2, 4], engine="naive", cache_dir=None, registry=registry)
    assert local.meta["engine"] == "local"
    # the head's output is the model output: both engines agree there, and only there
    assert [r.score for r in local.rows_for("head")] == [r.score for r in naive.rows_for("head")]
    assert local.score("stem", "2-bit") != naive.score("stem", "2-bit")
    # by hand: the stem's own output on both batches, flattened, with its 2-bit weight
    stem = make_resnetish().stem
    with torch.no_grad():
        reference = torch.cat([stem(x).reshape(-1) for x in images])
        stem.weight.copy_(palettize_tensor(stem.weight, PalettizationSpec(n_bits=2), quantile_clusterer).dequantize())
        output = torch.cat([stem(x).reshape(-1) for x in images])
    assert local.score("stem", "2-bit") == PSNR().score(reference.reshape(1, -1), output.reshape(1, -1))


def test_local_engine_holds_layers_in_groups_under_a_budget(resnetish, images):
    from bitsmith.mixed_precision.engine import EvalTask
    from bitsmith.mixed_precision.local import score_locally

    names = ["stem", "block.0", "block.2", "head"]
    record = palettize_tensor(resnetish.head.weight, PalettizationSpec(n_bits=2), quantile_clusterer)
    tasks = [EvalTask(i, n, "weight", []) for i, n in enumerate(names[:3])] + [EvalTask(3, "head", "weight",
                                                                                         [(0, record)])]
    scores, one_group, small = [], [], []
    calls = _count_calls(resnetish.stem)
    score_locally(resnetish, [((x,), {}) for x in images], tasks, PSNR(), lambda *s: one_group.append(s))
    assert len(calls) == 2 * 2  # sizing pass + one capture pass, per batch
    score_locally(resnetish, [((x,), {}) for x in images], tasks, PSNR(), lambda *s: small.append(s),
                  budget_bytes=1)
    assert len(calls) == 2 * 2 + 2 * (1 + 4)  # every layer is its own group
    scores = [s[:3] for s in one_group]
    assert scores == [s[:3] for s in small] and len(scores) == 1


def test_device_argument(resnetish, images, registry):
    from bitsmith.errors import ConfigError

    default = compute_sensitivity(resnetish, images, [2], cache_dir=None, registry=registry)
    on_cpu = compute_sensitivity(resnetish, images, [2], cache_dir=None, registry=registry, device="cpu")
    assert _rows(on_cpu) == _rows(default)  # the weights' device is the default
    with pytest.raises(ConfigError, match="device: 'gpu0' is not a torch device"):
        compute_sensitivity(resnetish, images, [2], cache_dir=None, registry=registry, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device: 'cuda' asked for, but torch.cuda.is_available\(\) is False"):
            compute_sensitivity(resnetish, images, [2], cache_dir=None, registry=registry, device="cuda")


def test_block_engine_on_a_thread_pool(resnetish, images, registry):
    import concurrent.futures as cf

    sequential = compute_sensitivity(resnetish, images, [2, 4], engine="block", cache_dir=None, registry=registry)
    with cf.ThreadPoolExecutor(2) as pool:  # each worker thread records its own copy once
        pooled = compute_sensitivity(resnetish, images, [2, 4], engine="block", cache_dir=None, registry=registry,
                                     executor=pool)
    assert pooled.meta["engine"] == "block" and _rows(pooled) == _rows(sequential)
