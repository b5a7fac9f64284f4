"""Atomic file writes: a killed process never leaves a half-written file under a real name.

A file is written to a hidden temporary beside its target, flushed, then renamed over the target. The
temporary's name carries the writer's process id, so `remove_stale_temporaries` can delete what a killed
run left behind without touching the files of a run still going.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".clipseg-"
TEMP_MARK = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for writers that take a file name; once the block succeeds the file is
    flushed to disk and renamed onto `path`. On any error it is removed and `path` is left as it was.

    The temporary file is created with the umask's permissions (unlike mkstemp's 0600) and keeps the target's
    suffix, for writers that choose the format by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path, path.suffix)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; once the block succeeds it replaces `path` (a folder or nothing)
    by renames, so `path` only ever holds a complete set of files. On any error the temporary is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path, "")
    temporary.mkdir()
    try:
        yield temporary
        if path.exists():
            retired = _temporary_name(path, "")
            os.replace(path, retired)
            os.replace(temporary, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{TEMP_MARK}{suffix}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """An open file (mode 'wb', or 'w' for UTF-8 text with '\\n' line ends) that replaces `path` atomically."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', got {mode!r}")
    text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    with atomic_path(path) as temporary, open(temporary, mode, **text) as file:
        yield file


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    with atomic_write(path, "wb") as file:
        file.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace `path` with `text` (UTF-8)."""
    with atomic_write(path, "w") as file:
        file.write(text)


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporaries (files and folders) under `directory` left by writers whose process is gone; returns
    how many."""
    root = Path(directory)
    if not root.is_dir():
        return 0
    removed = 0
    for temporary in list(root.rglob(f"{TEMP_PREFIX}*{TEMP_MARK}*")):
        pid = temporary.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    # On Windows os.kill would terminate the process rather than probe it: keep such files there.
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
