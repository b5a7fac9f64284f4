"""Watched folders: which input files are new, changed or still being written, and a record of finished work.

The CLI (`clipseg segment DIR --watch`) plans and writes outputs exactly as a normal run; this module tells it
what to do next:

- `FolderEvents` waits for file-system events below the watched folders (watchfiles) and wakes up at least every
  `poll_seconds`, so files that were still growing are looked at again;
- `split_stable` keeps the files whose size and modification time stay the same over a short interval (a file
  being copied or downloaded keeps changing);
- `WatchState` remembers, in an append-only journal in the output folder, the content (size, mtime, SHA-256) of
  every input whose outputs were written: a restart skips them, and a file whose content changed is done again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .fileio import write_text

STATE_NAME = ".clipseg-watch-state.jsonl"
STATE_VERSION = 2
DEFAULT_SETTLE_SECONDS = 1.0
# Look at the whole tree this often even without events (events can be missed, e.g. on network file systems).
RESCAN_SECONDS = 10.0
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """What a file held when it was processed."""

    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> Fingerprint:
        status = path.stat()
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(_HASH_CHUNK):
                digest.update(chunk)
        return cls(status.st_size, status.st_mtime_ns, digest.hexdigest())


class WatchState:
    """The inputs whose outputs were written, with their fingerprints, kept in `path` as an append-only journal.

    The journal is JSON Lines: a header line, then one record per finished input, appended and fsynced as each
    input is done (the last record of an input wins), so recording stays cheap however many inputs the folder
    holds. Opening the state compacts the journal to one record per input (written atomically), and so does
    `close`; a compaction that fails (a full disk) leaves the journal as it was, still valid. A torn last line (a
    crash in the middle of an append) is ignored, and the next append starts on a line of its own. A missing or
    unreadable journal starts an empty record (outputs that exist still count as done; see `changed`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._files = _read_journal(path)
        self._descriptor: int | None = None
        self.compact()

    def __enter__(self) -> WatchState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _key(source: Path) -> str:
        return str(source.resolve())

    def known(self, source: Path) -> bool:
        return self._key(source) in self._files

    def changed(self, source: Path) -> bool:
        """Whether `source` holds other content than when it was recorded (False if never recorded). Size and
        modification time decide when they match; otherwise the content hash does (a touched file is unchanged)."""
        recorded = self._files.get(self._key(source))
        if recorded is None:
            return False
        status = source.stat()
        if (status.st_size, status.st_mtime_ns) == (recorded.size, recorded.mtime_ns):
            return False
        current = Fingerprint.of(source)
        if current.sha256 == recorded.sha256:
            # Touched only: remember the new time (in the journal at the next compaction; until then a restart
            # hashes the file once more).
            self._files[self._key(source)] = current
            return False
        return True

    def record(self, sources: Iterable[Path]) -> None:
        """Remember the current content of `sources` (those that still exist) in the journal."""
        fingerprints = {}
        for source in sources:
            with contextlib.suppress(OSError):  # gone meanwhile: nothing to remember
                fingerprints[source] = Fingerprint.of(source)
        self.remember(fingerprints)

    def remember(self, fingerprints: dict[Path, Fingerprint]) -> None:
        """Remember what each input held when it was read (its outputs are written): the records are appended
        to the journal and on disk when this returns. Raises OSError (naming the journal) if they cannot be
        written; the journal then holds what it held before."""
        if not fingerprints:
            return
        records = {self._key(source): fingerprint for source, fingerprint in fingerprints.items()}
        self._append("".join(_record_line(key, fingerprint) for key, fingerprint in records.items()))
        self._files.update(records)

    def compact(self) -> None:
        """Rewrite the journal atomically with one record per input (best effort: see the class docstring)."""
        self._close_descriptor()
        lines = [_header_line()]
        lines += [_record_line(key, fingerprint) for key, fingerprint in sorted(self._files.items())]
        with contextlib.suppress(OSError):
            write_text(self.path, "".join(lines))

    def close(self) -> None:
        """Compact the journal and let go of it."""
        self.compact()

    def _append(self, text: str) -> None:
        data = text.encode("utf-8")
        try:
            if self._descriptor is None:
                self._descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            end = os.lseek(self._descriptor, 0, os.SEEK_END)
            if end == 0:  # no compaction could write the file: the header first
                data = _header_line().encode("utf-8") + data
            elif os.pread(self._descriptor, 1, end - 1) != b"\n":  # a torn last line no compaction removed
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._descriptor, view) :]
                os.fsync(self._descriptor)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._descriptor, end)  # no torn record left behind a failed append
                raise
        except OSError as error:
            raise OSError(error.errno, error.strerror or str(error), str(self.path)) from None

    def _close_descriptor(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def _header_line() -> str:
    return json.dumps({"version": STATE_VERSION}) + "\n"


def _record_line(key: str, fingerprint: Fingerprint) -> str:
    return json.dumps({"file": key, **asdict(fingerprint)}) + "\n"


def _read_journal(path: Path) -> dict[str, Fingerprint]:
    """The records of a journal (the last per input); unparsable lines, such as a torn last one, are skipped; a
    journal without this version's header gives none."""
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    files: dict[str, Fingerprint] = {}
    for number, line in enumerate(lines):
        try:
            data = json.loads(line)
            if number == 0:
                if data.get("version") != STATE_VERSION:
                    return {}
                continue
            key = data.pop("file")
            files[key] = Fingerprint(**data)
        except (ValueError, TypeError, KeyError, AttributeError):
            if number == 0:
                return {}
    return files


def split_stable(
    paths: Sequence[Path], interval: float = DEFAULT_SETTLE_SECONDS, *, sleep: Callable[[float], None] = time.sleep
) -> tuple[list[Path], list[Path]]:
    """(stable, busy): the files whose size and modification time did not change over `interval` seconds and are
    not empty, and the others (still being written, or gone)."""

    def status(path: Path) -> tuple[int, int] | None:
        try:
            result = path.stat()
        except OSError:
            return None
        return result.st_size, result.st_mtime_ns

    if not paths:
        return [], []
    before = [status(path) for path in paths]
    sleep(interval)
    stable, busy = [], []
    for path, first in zip(paths, before, strict=True):
        second = status(path)
        (stable if first is not None and first == second and first[0] > 0 else busy).append(path)
    return stable, busy


class FolderEvents:
    """Iterate over the sets of files (and folders) added or modified below `roots`, ignoring hidden entries,
    `ignore` and files whose suffix is not in `suffixes`; yields an empty set after `poll_seconds` without events.
    Stops when `stop` is set; Ctrl-C (and SIGTERM, if it raises KeyboardInterrupt) raises KeyboardInterrupt."""

    def __init__(
        self,
        roots: Sequence[Path],
        *,
        suffixes: frozenset[str],
        ignore: Path | None = None,
        poll_seconds: float = DEFAULT_SETTLE_SECONDS,
        stop: threading.Event | None = None,
    ) -> None:
        self.roots = [root.resolve() for root in roots if root.is_dir()]
        self.suffixes = suffixes
        self.ignore = ignore.resolve() if ignore is not None else None
        self.poll_ms = max(50, round(poll_seconds * 1000))
        self.stop = stop or threading.Event()

    def _wanted(self, path: Path) -> bool:
        # New folders count too: files created in them before their watch is set up raise no event of their own.
        if path.suffix.lower() not in self.suffixes and not path.is_dir():
            return False
        resolved = path.resolve()
        if self.ignore is not None and resolved.is_relative_to(self.ignore):
            return False
        for root in self.roots:
            if resolved.is_relative_to(root):
                return not any(part.startswith(".") for part in resolved.relative_to(root).parts)
        return False

    def __iter__(self) -> Iterator[set[Path]]:
        try:
            import watchfiles
        except ImportError:
            raise ImportError("watching folders needs watchfiles: pip install 'clipseg[video]'") from None
        if not self.roots:
            return
        changes = watchfiles.watch(
            *self.roots,
            watch_filter=lambda change, path: change != watchfiles.Change.deleted and self._wanted(Path(path)),
            debounce=300,
            step=50,
            rust_timeout=self.poll_ms,
            yield_on_timeout=True,
            stop_event=self.stop,
        )
        for batch in changes:
            yield {Path(path) for _, path in batch}


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs (writing a file's outputs and recording it), then raise
    KeyboardInterrupt if one came: a stop finishes the current file instead of leaving its record behind its
    outputs. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    signals = [signal.SIGINT, *([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])]
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt
