"""bitsmith.atomic: writes land whole or not at all, and never replace by accident."""

from __future__ import annotations

import os

import pytest

from bitsmith import atomic
from bitsmith.atomic import OverwriteError


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".bitsmith-tmp-"))


def test_write_bytes_and_text_create_files(tmp_path):
    assert atomic.write_bytes(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    atomic.write_text(tmp_path / "sub" / "b.txt", "héllo\n")
    assert (tmp_path / "sub" / "b.txt").read_bytes() == "héllo\n".encode()
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_existing_file_is_refused_without_overwrite(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(OverwriteError) as info:
        atomic.write_text(target, "new")
    message = str(info.value)
    assert str(target) in message and "overwrite=True" in message and "--overwrite" in message
    assert isinstance(info.value, FileExistsError)
    assert target.read_text() == "old"
    atomic.write_text(target, "new", overwrite=True)
    assert target.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_failing_writer_keeps_previous_content(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic.open_for_write(target, overwrite=True) as fh:
            fh.write(b"partial")
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"previous model"
    assert _leftovers(tmp_path) == []


def test_temp_path_for_path_writers(tmp_path):
    target = tmp_path / "weights.pt"
    with atomic.temp_path(target) as tmp:
        assert tmp.name == "weights.pt" and tmp.parent.parent == tmp_path
        assert not tmp.exists() and not target.exists()
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert _leftovers(tmp_path) == []


def test_temp_path_replaces_a_folder_only_with_overwrite(tmp_path):
    target = tmp_path / "model.mlpackage"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OverwriteError, match="folder"):
        with atomic.temp_path(target):
            pytest.fail("body must not run when the destination is refused")
    with atomic.temp_path(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == []


def test_writer_that_creates_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="created no file"):
        with atomic.temp_path(tmp_path / "x.onnx"):
            pass
    assert not (tmp_path / "x.onnx").exists() and _leftovers(tmp_path) == []


def test_file_appearing_during_the_write_is_not_replaced(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(OverwriteError):
        with atomic.open_for_write(target) as fh:
            fh.write(b"ours")
            target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's"


def test_check_can_write(tmp_path):
    assert atomic.check_can_write(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "old").write_text("x")
    with pytest.raises(OverwriteError):
        atomic.check_can_write(tmp_path / "old")
    assert atomic.check_can_write(tmp_path / "old", overwrite=True) == tmp_path / "old"


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', got 'a'"):
        with atomic.open_for_write(tmp_path / "f", "a"):
            pass


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions")
def test_unwritable_folder_gives_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="is not writable") as info:
            atomic.write_text(folder / "report.json", "{}")
        assert "report.json" in str(info.value)
    finally:
        folder.chmod(0o700)
