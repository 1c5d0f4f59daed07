"""The sensitivity cache verifies what it reads: damaged or edited entries are recomputed, never trusted."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from torch import nn

from bitsmith.mixed_precision import compute_sensitivity
from bitsmith.mixed_precision.cache import SensitivityCache


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def _data():
    return [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]


def _scores(table):
    return {(r.layer, r.candidate): r.score for r in table.rows}


@pytest.fixture(scope="module")
def fresh():
    """The table computed without any cache: what every cached run must reproduce."""
    return compute_sensitivity(_model(), _data(), [2, 4], cache_dir=None, progress=False)


def _run(cache_dir):
    return compute_sensitivity(_model(), _data(), [2, 4], cache_dir=cache_dir, progress=False)


def test_edited_score_is_recomputed_with_a_warning(tmp_path, fresh, caplog):
    first = _run(tmp_path)
    assert _scores(first) == _scores(fresh)
    rows = next(tmp_path.glob("sensitivity/*/rows.jsonl"))
    lines = rows.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["score"] = 99.0  # a hand edit (or a flipped byte) without the matching digest
    rows.write_text("\n".join([json.dumps(edited), *lines[1:], "not json at all"]) + "\n")
    with caplog.at_level(logging.WARNING, logger="bitsmith"):
        again = _run(tmp_path)
    assert _scores(again) == _scores(fresh)
    assert again.meta["pairs_scored"] == 1
    assert "ignored 2 damaged or edited cached score(s)" in caplog.text
    assert len(rows.read_text().splitlines()) == len(lines)  # damaged lines dropped, the recomputed one appended
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bitsmith"):
        third = _run(tmp_path)
    assert _scores(third) == _scores(fresh)
    assert third.meta["pairs_scored"] == 0 and "damaged" not in caplog.text  # reported once, not on every run


@pytest.mark.parametrize("damage", ["flip", "swap", "garbage"])
def test_damaged_record_is_recomputed_with_a_warning(tmp_path, fresh, caplog, damage):
    _run(tmp_path)
    records = sorted(tmp_path.glob("sensitivity/*/records/*.pt"))
    assert len(records) == 4
    if damage == "flip":  # change one value of the stored LUT, keep the file loadable
        stored = torch.load(records[0], weights_only=True)
        stored["state"]["lut"] = stored["state"]["lut"] + 1.0
        torch.save(stored, records[0])
    elif damage == "swap":  # another pair's (valid) record under this pair's name
        records[0].write_bytes(records[1].read_bytes())
    else:
        records[0].write_bytes(b"\x00" * 100)
    rows = next(tmp_path.glob("sensitivity/*/rows.jsonl"))
    rows.write_text("")  # force re-scoring, so records are read back
    with caplog.at_level(logging.WARNING, logger="bitsmith"):
        again = _run(tmp_path)
    assert _scores(again) == _scores(fresh)
    assert f"cached record {records[0]} is not usable" in caplog.text


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions (not root)")
def test_read_only_cache_runs_without_cache(tmp_path, fresh, caplog):
    tmp_path.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="bitsmith"):
            table = _run(tmp_path / "cache")
    finally:
        tmp_path.chmod(0o700)
    assert _scores(table) == _scores(fresh)
    assert "running without the cache" in caplog.text


def test_unwritable_cache_location_falls_back(tmp_path, fresh, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="bitsmith"):
        table = _run(blocker)
    assert _scores(table) == _scores(fresh)
    assert "is not usable" in caplog.text and "running without the cache" in caplog.text
    assert blocker.read_text() == "a file where the cache folder should be"


def test_rows_carry_a_digest(tmp_path):
    cache = SensitivityCache(tmp_path, "k" * 64, {"schema_version": 1})
    cache.add_row("fc", "p1", score=12.5, seconds=0.1)
    (line,) = (cache.path / "rows.jsonl").read_text().splitlines()
    assert len(json.loads(line)["digest"]) == 64
    assert SensitivityCache(tmp_path, "k" * 64, {}).row("fc", "p1")["score"] == 12.5
    (cache.path / "rows.jsonl").write_text(line.replace("12.5", "13.5") + "\n")
    assert SensitivityCache(tmp_path, "k" * 64, {}).row("fc", "p1") is None


@pytest.mark.skipif(os.name != "posix", reason="advisory locks are POSIX")
def test_dropping_damaged_rows_waits_for_a_writer_and_keeps_its_row(tmp_path):
    import fcntl
    import threading

    writer = SensitivityCache(tmp_path, "k" * 64, {"schema_version": 1})
    writer.add_row("fc", "p1", score=12.5, seconds=0.1)
    rows = writer.path / "rows.jsonl"
    with open(rows, "a") as fh:
        fh.write('{"layer": "fc", "pair": "torn\n')  # a damaged line: the next reader rewrites the file
    opened = []
    with open(writer.path / "rows.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another run is appending right now
        reader = threading.Thread(target=lambda: opened.append(SensitivityCache(tmp_path, "k" * 64, {})))
        reader.start()
        reader.join(0.5)
        assert reader.is_alive()  # it waits instead of reading a file about to grow
        fresh = SensitivityCache(None, "k" * 64, {})
        fresh.add_row("fc", "p2", score=7.0, seconds=0.1)
        with open(rows, "a") as fh:  # what the other run appends while holding the lock
            fh.write(json.dumps(fresh.row("fc", "p2")) + "\n")
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    reader.join(10)
    assert opened[0].row("fc", "p1")["score"] == 12.5 and opened[0].row("fc", "p2")["score"] == 7.0
    kept = [json.loads(line)["pair"] for line in rows.read_text().splitlines()]
    assert kept == ["p1", "p2"]  # the damaged line is gone, the fresh row survived the rewrite
