"""Atomic file writes: every file bitsmith writes goes through this module.

A write lands in a private temporary folder next to the destination (so on the same
file system), is flushed and fsynced, and is then renamed onto the final path. An
interrupted or failing write therefore never leaves a truncated file where the
previous one was, and never leaves a half-written file under the final name.

An existing destination is never replaced unless the caller passes
``overwrite=True``; without it :class:`OverwriteError` names the path and the option.

Use :func:`write_bytes` / :func:`write_text` for data already in memory,
:func:`open_for_write` for code that streams into a file object, and
:func:`temp_path` for writers that insist on a path of their own (``torch.save``,
``onnx.save``, a Core ML ``.mlpackage`` folder)::

    from bitsmith import atomic

    atomic.write_text(out / "report.json", text, overwrite=overwrite)
    with atomic.temp_path(out / "model.onnx", overwrite=overwrite) as tmp:
        onnx.save(model, tmp)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bitsmith.errors import BitsmithError

__all__ = [
    "OverwriteError",
    "check_can_write",
    "open_for_write",
    "temp_path",
    "write_bytes",
    "write_text",
]

_TEMP_PREFIX = ".bitsmith-tmp-"


class OverwriteError(BitsmithError, FileExistsError):
    """A write would replace an existing file and ``overwrite`` was not set."""

    def __init__(self, path: os.PathLike[str] | str):
        self.path = Path(path)
        super().__init__(
            errno.EEXIST,
            f"refusing to replace existing {'folder' if self.path.is_dir() else 'file'} "
            f"'{self.path}'; pass overwrite=True (CLI: --overwrite) to replace it",
        )

    def __str__(self) -> str:
        return str(self.strerror)


def check_can_write(path: os.PathLike[str] | str, *, overwrite: bool = False) -> Path:
    """Raise :class:`OverwriteError` if ``path`` exists and ``overwrite`` is false.

    Call it for every destination before any long work starts, so that a refusal
    costs nothing. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise OverwriteError(path)
    return path


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries to disk where the platform allows it (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_temp_dir(path: Path) -> Path:
    """Create the private temporary folder next to ``path``; clear error if unwritable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=path.parent))
    except OSError as exc:
        raise type(exc)(
            exc.errno,
            f"cannot write '{path}': folder '{path.parent}' is not writable "
            f"({exc.strerror or exc})",
        ) from exc


def _commit(src: Path, dst: Path, scratch: Path, overwrite: bool) -> None:
    """Move the finished ``src`` onto ``dst``; ``scratch`` is the private temp folder."""
    if not overwrite:
        if src.is_file():
            try:
                os.link(src, dst)  # fails atomically if dst appeared meanwhile
                return
            except FileExistsError:
                raise OverwriteError(dst) from None
            except OSError:
                pass  # file system without hard links: check, then rename
        check_can_write(dst)
        os.replace(src, dst)
        return
    if dst.is_dir() and not dst.is_symlink():
        old = scratch / ".previous"
        os.replace(dst, old)  # a folder cannot be replaced in one step
        os.replace(src, dst)
        return
    if src.is_dir() and (dst.exists() or dst.is_symlink()):
        os.unlink(dst)
    os.replace(src, dst)


@contextlib.contextmanager
def temp_path(path: os.PathLike[str] | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path with ``path``'s file name; on success rename it to ``path``.

    The temporary path sits in a fresh private folder beside ``path`` and does not
    exist yet: the body creates it (a file or a folder). If the body raises, or
    creates nothing, ``path`` is left untouched and the temporary files are removed.
    Existing destinations are refused before the body runs unless ``overwrite``.
    """
    final = check_can_write(path, overwrite=overwrite)
    scratch = _make_temp_dir(final)
    tmp = scratch / final.name
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(
                errno.ENOENT, f"the writer for '{final}' created no file at the temporary path"
            )
        if tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        _commit(tmp, final, scratch, overwrite)
        _fsync_dir(final.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def open_for_write(
    path: os.PathLike[str] | str,
    mode: str = "wb",
    *,
    overwrite: bool = False,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; rename it onto ``path`` when the block ends.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise).
    The file is flushed and fsynced before the rename; if the block raises, ``path``
    keeps its previous content (or stays absent).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"open_for_write: mode must be 'wb' or 'w', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with temp_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "x" + mode[1:], encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_bytes(
    path: os.PathLike[str] | str, data: bytes, *, overwrite: bool = False
) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path`` as a :class:`~pathlib.Path`."""
    with open_for_write(path, "wb", overwrite=overwrite) as fh:
        fh.write(data)
    return Path(path)


def write_text(
    path: os.PathLike[str] | str,
    text: str,
    *,
    overwrite: bool = False,
    encoding: str = "utf-8",
) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default); return the path."""
    with open_for_write(path, "w", overwrite=overwrite, encoding=encoding, newline="") as fh:
        fh.write(text)
    return Path(path)
