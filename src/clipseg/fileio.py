"""Atomic file writes: a killed process never leaves a half-written file under a real name.

A file is written to a hidden temporary beside its target, flushed, then renamed over the target. The
temporary's name carries the writer's process id, so `remove_stale_temporaries` can delete what a killed
run left behind without touching the files of a run still going.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

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
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.errno is None:
            raise
        # Name the file being written (not the hidden temporary, nor nothing as a failed write() does).
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
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


LOCK_NAME = ".clipseg.lock"


class FolderLockedError(RuntimeError):
    """Another process holds the lock of an output folder."""


@contextlib.contextmanager
def folder_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on `directory` (a `.clipseg.lock` file in it) for the block, or raise
    `FolderLockedError` at once if another process holds it.

    The lock is an OS lock on the open file (flock on POSIX, msvcrt on Windows), so the OS releases it when its
    holder ends, even by kill -9: a lock file left behind never blocks a later run."""
    path = Path(directory) / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_lock(descriptor):
            try:
                holder = os.read(descriptor, 32).decode("ascii", "replace").strip()
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = ""
            raise FolderLockedError(
                f"{directory}: another clipseg run is writing to this folder"
                + (f" (process {holder})" if holder.isdigit() else "")
                + "; wait for it to finish or choose another output folder"
            )
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode("ascii"))
        try:
            yield path
        finally:
            # While still locked, so a later run creates a fresh file (Windows cannot delete an open file).
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        os.close(descriptor)  # closing releases the lock


def _try_lock(descriptor: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# Size caps of the small files a model folder or a run names; a larger file is refused rather than read.
MAX_CONFIG_BYTES = 16 * 1024**2  # config.json, preprocessor_config.json, shard indexes, run configs
MAX_TOKENIZER_BYTES = 64 * 1024**2  # vocab.json, merges.txt (OpenAI's are 0.9 MB and 0.5 MB)


class UnreadableFileError(ValueError):
    """A file that is not a regular file (FIFO, device, directory), too large for its kind, or not readable."""


def require_regular_file(path: str | os.PathLike, kind: str = "file") -> Path:
    """`path` if it names a regular file (after following symlinks); otherwise a one-line error naming it.

    FIFOs, sockets and devices (e.g. a symlink to /dev/zero) are refused: reading them could block forever or
    never end."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as error:
        raise UnreadableFileError(f"{path}: cannot read the {kind} ({error.strerror or error})") from None
    if stat.S_ISDIR(mode):
        raise UnreadableFileError(f"{path}: is a directory, expected a {kind}")
    if not stat.S_ISREG(mode):
        raise UnreadableFileError(f"{path}: not a regular file ({_file_type(mode)}), expected a {kind}")
    return path


def read_limited_bytes(path: str | os.PathLike, limit: int, kind: str = "file", *, allow_larger: bool = False) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else a one-line error naming the file (with
    `allow_larger`, the first `limit` bytes of a larger file).

    The file is opened without blocking and checked after opening, so a FIFO or device swapped in after a
    check cannot hang the read or make it endless."""
    path = require_regular_file(path, kind)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise UnreadableFileError(f"{path}: cannot read the {kind} ({error.strerror or error})") from None
    with os.fdopen(descriptor, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFileError(f"{path}: not a regular file ({_file_type(mode)}), expected a {kind}")
        data = file.read(limit + 1)
    if len(data) > limit:
        if allow_larger:
            return data[:limit]
        raise UnreadableFileError(f"{path}: larger than the {limit // 1024**2} MB allowed for a {kind}")
    return data


def read_limited_text(path: str | os.PathLike, limit: int, kind: str = "file") -> str:
    """`read_limited_bytes` decoded as UTF-8; other encodings are a one-line error naming the file."""
    data = read_limited_bytes(path, limit, kind)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableFileError(
            f"{path}: the {kind} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})"
        ) from None


def read_json_file(path: str | os.PathLike, limit: int = MAX_CONFIG_BYTES, kind: str = "JSON file") -> Any:
    """Parse a UTF-8 JSON file read with `read_limited_text`; any problem is a one-line error naming the file."""
    text = read_limited_text(path, limit, kind)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UnreadableFileError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except RecursionError:
        raise UnreadableFileError(f"{path}: not valid JSON (nested too deeply)") from None


def read_annotation_json(path: str | os.PathLike) -> Any:
    """A dataset's JSON annotation file (any size, a regular file): a truncated or broken file is a one-line
    `UnreadableFileError` naming it and the position."""
    path = require_regular_file(path, "JSON annotation file")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise UnreadableFileError(
            f"{path}: not valid JSON, truncated or corrupt ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except UnicodeDecodeError as error:
        raise UnreadableFileError(f"{path}: not UTF-8 text (byte offset {error.start})") from None
    except RecursionError:
        raise UnreadableFileError(f"{path}: not valid JSON (nested too deeply)") from None


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"
