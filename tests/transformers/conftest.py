"""Tiny random-weight transformers models (GPT-2 and Llama architectures) for the transformers tests."""

from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 1000
"""Vocabulary size: not a multiple of 16, so the w4 preset's group size must fall back on the embeddings."""


@pytest.fixture(autouse=True)
def _quiet_transformers():
    """transformers logs config remarks about the tiny vocabularies; keep test output readable."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    """A 2-layer GPT-2 (``Conv1D`` projections, tied ``lm_head``) with random weights, in eval mode."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    """A 2-layer Llama (``nn.Linear`` projections, grouped-query attention, untied head) with random weights."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=176,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                      max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                                      pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


@pytest.fixture
def tokens():
    """A batch of two 12-token sequences."""
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
