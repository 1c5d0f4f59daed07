"""all-MiniLM-L6-v2 sentence encoder (offline) and the sentence corpus."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bitsmith_zoo import minilm
from bitsmith_zoo.minilm import PARAPHRASE_PAIRS, SENTENCES, SentenceEncoder, load_minilm, sentence_split, tokenize


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return load_minilm()


def test_corpus_is_varied_and_split_disjointly() -> None:
    assert 100 <= len(SENTENCES) == len(set(SENTENCES))
    cal, held = sentence_split()
    assert len(cal) == 60 and len(held) == len(SENTENCES) - 60
    assert set(cal).isdisjoint(held) and set(cal) | set(held) == set(SENTENCES)
    assert sentence_split() == (cal, held)
    assert sentence_split(seed=1) != (cal, held)
    assert sentence_split(n_calibration=80)[0][:60] == cal  # same shuffle, longer prefix
    with pytest.raises(ValueError):
        sentence_split(n_calibration=len(SENTENCES) + 1)
    for a, _ in PARAPHRASE_PAIRS:
        assert a in SENTENCES


def test_tokenize() -> None:
    batch = tokenize(["Hello world.", "A somewhat longer sentence than the first one."])
    assert set(batch) == {"input_ids", "attention_mask"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == torch.long and ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].sum() < mask[1].sum() and ids[0, 0] == 101  # [CLS]
    long = tokenize("word " * 1000)
    assert long["input_ids"].shape == (1, minilm.MAX_SEQ_LENGTH)


@torch.no_grad()
def test_embeddings_are_unit_norm_384(encoder: SentenceEncoder) -> None:
    assert not encoder.training
    emb = encoder(tokenize(list(SENTENCES[:16])))
    assert emb.shape == (16, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(16), atol=1e-5)


@torch.no_grad()
def test_forward_accepts_dict_tuple_and_positional(encoder: SentenceEncoder) -> None:
    batch = tokenize(["The cat sat on the mat.", "Stocks fell sharply today."])
    ref = encoder(batch)
    assert torch.allclose(encoder((batch["input_ids"], batch["attention_mask"])), ref, atol=1e-6)
    assert torch.allclose(encoder(batch["input_ids"], batch["attention_mask"]), ref, atol=1e-6)
    # Padding does not change a sentence's embedding (masked mean pooling).
    alone = encoder(tokenize(["The cat sat on the mat."]))
    assert torch.allclose(alone[0], ref[0], atol=1e-5)


@torch.no_grad()
def test_paraphrases_are_closer_than_unrelated_sentences(encoder: SentenceEncoder) -> None:
    left = encoder(tokenize([a for a, _ in PARAPHRASE_PAIRS]))
    right = encoder(tokenize([b for _, b in PARAPHRASE_PAIRS]))
    sim = left @ right.T  # (P, P): diagonal = paraphrases
    diag = sim.diagonal()
    off = sim - torch.diag(diag) - torch.eye(len(diag)) * 2
    assert diag.min() > 0.5
    assert (diag > off.max(dim=1).values).all()
    emb = encoder(tokenize(list(SENTENCES)))
    unrelated = emb @ emb.T
    assert unrelated.fill_diagonal_(0).abs().mean() < 0.15
    assert diag.mean() > unrelated.mean() + 0.5


def test_import_does_not_pull_transformers() -> None:
    code = (
        "import sys, bitsmith_zoo as z; z.SENTENCES; z.sentence_split(); z.image_crops;"
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
