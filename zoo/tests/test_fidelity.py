"""Fidelity tasks: real models with disjoint calibration / held-out data and a fidelity measure."""

from __future__ import annotations

import copy

import pytest
import torch

from bitsmith_zoo.fidelity import TASKS, mean_cosine, minilm_task, mobilenet_v2_task, top1_agreement


def test_measures_on_known_values() -> None:
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 3.0], [5.0, 1.0, 0.0]])
    out = torch.tensor([[0.9, 0.1, 0.0], [3.0, 2.0, 1.0], [0.0, 0.0, 1.0], [5.0, 1.0, 0.0]])
    assert top1_agreement(ref, out) == 0.75
    assert mean_cosine(ref[:1], torch.tensor([[0.0, 1.0, 0.0]])) == pytest.approx(0.0)
    assert mean_cosine(ref, 2 * ref) == pytest.approx(1.0)


def test_mobilenet_v2_task_scores_fp32_as_perfect_and_a_broken_copy_as_not() -> None:
    task = mobilenet_v2_task(calibration_crops=2, heldout_crops=8)
    assert task.calibration[0].shape == (2, 3, 224, 224) and task.heldout[0].shape == (8, 3, 224, 224)
    assert task.sensitivity_metric == "kl" and task.measure == "top-1 agreement"
    assert task.fidelity(task.model) == 1.0
    broken = copy.deepcopy(task.model)
    with torch.no_grad():
        broken.classifier[1].weight.mul_(-1)  # reverses the ranking of every logit
    assert task.fidelity(broken) < 0.2


def test_minilm_task_uses_disjoint_sentences_and_cosine() -> None:
    task = minilm_task(calibration_sentences=60)
    ids, mask = task.calibration[0]
    held_ids, held_mask = task.heldout
    assert ids.shape[0] == 60 and held_ids.shape[0] == 60  # 120 sentences, split in two
    assert ids.shape == mask.shape and held_ids.shape == held_mask.shape
    assert task.fidelity(task.model) == pytest.approx(1.0, abs=1e-6)
    assert task.sensitivity_metric == "mse" and set(TASKS) == {"mobilenet_v2", "minilm", "efficientnet_lite0"}


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
