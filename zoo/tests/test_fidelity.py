"""Fidelity tasks: real models with disjoint calibration / held-out data and a fidelity measure."""

from __future__ import annotations

import copy

import pytest
import torch

from bitsmith_zoo.fidelity import (
    STRATA,
    TASKS,
    doc_paragraphs,
    kl_rows,
    mean_cosine,
    minilm_task,
    mobilenet_v2_task,
    top1_agreement,
)


def test_measures_on_known_values() -> None:
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 3.0], [5.0, 1.0, 0.0]])
    out = torch.tensor([[0.9, 0.1, 0.0], [3.0, 2.0, 1.0], [0.0, 0.0, 1.0], [5.0, 1.0, 0.0]])
    assert top1_agreement(ref, out) == 0.75
    assert mean_cosine(ref[:1], torch.tensor([[0.0, 1.0, 0.0]])) == pytest.approx(0.0)
    assert mean_cosine(ref, 2 * ref) == pytest.approx(1.0)


def test_kl_rows_on_known_values() -> None:
    ref = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    out = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    p = torch.tensor(2.0).sigmoid().item()  # softmax([2, 0])[0]
    expected = p * torch.log(torch.tensor(p / (1 - p))) + (1 - p) * torch.log(torch.tensor((1 - p) / p))
    assert kl_rows(ref, out).tolist() == pytest.approx([0.0, expected.item()])


def test_mobilenet_v2_task_scores_fp32_as_perfect_and_a_broken_copy_as_not() -> None:
    task = mobilenet_v2_task(calibration_crops=2, heldout_crops=8, broad_crops=32)
    assert task.calibration[0].shape == (2, 3, 224, 224) and task.heldout[0].shape == (8, 3, 224, 224)
    assert task.sensitivity_metric == "kl" and task.measure == "top-1 agreement"
    assert task.fidelity(task.model) == 1.0
    perfect = task.breakdown(task.model)
    assert perfect.measure == 1.0 and perfect.kl == 0.0 and len(perfect.sources) == 16
    assert sum(n for n, _, _ in perfect.sources.values()) == 32 == sum(n for n, _, _ in perfect.strata.values())
    assert set(perfect.strata) <= {label for label, _, _ in STRATA}
    broken = copy.deepcopy(task.model)
    with torch.no_grad():
        broken.classifier[1].weight.mul_(-1)  # reverses the ranking of every logit
    assert task.fidelity(broken) < 0.2
    bad = task.breakdown(broken)
    assert bad.measure < 0.2 and bad.kl > 1.0 and all(kl > 0.1 for _, _, kl in bad.sources.values())
    confidence = task.broad_reference.softmax(-1).amax(-1)
    assert bad.strata["p < 0.3"][0] == int((confidence < 0.3).sum())
    assert mobilenet_v2_task(calibration_crops=1, heldout_crops=1, broad_crops=0).broad is None


def test_doc_paragraphs_are_prose_of_pythons_docs() -> None:
    docs = doc_paragraphs(64)
    assert len(docs) == len(set(docs)) == 64
    assert all(25 <= len(p.split()) <= 90 and "\n" not in p for p in docs)
    with pytest.raises(ValueError, match="paragraphs qualify"):
        doc_paragraphs(100_000)


def test_minilm_task_uses_disjoint_sentences_and_cosine() -> None:
    task = minilm_task(calibration_sentences=60)
    ids, mask = task.calibration[0]
    held_ids, held_mask = task.heldout
    assert ids.shape[0] == 60 and held_ids.shape[0] == 60  # 120 sentences, split in two
    assert ids.shape == mask.shape and held_ids.shape == held_mask.shape
    assert task.fidelity(task.model) == pytest.approx(1.0, abs=1e-6)
    assert task.sensitivity_metric == "mse" and set(TASKS) == {"mobilenet_v2", "minilm", "efficientnet_lite0"}
    broad = task.breakdown(task.model)
    assert broad.kl is None and broad.strata == {} and broad.measure == pytest.approx(1.0, abs=1e-6)
    assert {k: v[0] for k, v in broad.sources.items()} == {"held-out sentences": 60, "python docs paragraphs": 64}


def test_minilm_calibration_data_comes_from_calibration_sentences_only() -> None:
    from bitsmith_zoo.minilm import sentence_split, tokenize

    task = minilm_task(calibration_sentences=60)
    calibration, heldout = sentence_split(60)
    plain, joined = task.calibration_data
    assert torch.equal(plain[0], task.calibration[0][0]) and joined[0].shape[0] == 60
    assert joined[0].shape[1] > plain[0].shape[1]  # two sentences per row
    held_tokens = set(tokenize(heldout)["input_ids"].flatten().tolist())
    cal_tokens = set(tokenize(calibration)["input_ids"].flatten().tolist())
    assert set(joined[0].flatten().tolist()) <= cal_tokens and held_tokens - cal_tokens
