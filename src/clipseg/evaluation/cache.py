"""Per-sample results on disk, so that an interrupted evaluation continues where it stopped.

A cache directory belongs to one (model weights, protocol, dataset, options) fingerprint. Results are buffered
and written in chunks (``chunk-<n>.npz``, each a temp file moved into place atomically); a run that stops loses at
most the unwritten buffer. Files hold only numeric and string arrays and are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write, write_text

MANIFEST = "manifest.json"


def fingerprint(description: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable description."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_signature(path: str | os.PathLike) -> dict[str, Any]:
    """Size and modification time of a weights file or of every file in a weights directory (cheap, no hashing)."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return {path.name: [stat.st_size, stat.st_mtime_ns]}
    if path.is_dir():
        return {
            str(p.relative_to(path)): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
    return {}


class SampleCache:
    """Chunked on-disk store of per-sample arrays, keyed by sample id.

    Args:
        directory: where the chunks live (created).
        description: what the results depend on; stored in ``manifest.json`` for inspection.
        chunk_size: samples per chunk file.
        enabled: False keeps nothing on disk (every run starts fresh).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        description: Mapping[str, Any],
        *,
        chunk_size: int = 64,
        enabled: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.enabled = enabled
        self.chunk_size = chunk_size
        self._buffer: list[tuple[str, dict[str, np.ndarray]]] = []
        if enabled:
            self.directory.mkdir(parents=True, exist_ok=True)
            manifest = self.directory / MANIFEST
            if not manifest.exists():
                text = json.dumps(description, indent=2, sort_keys=True, default=str)
                write_text(manifest, text)

    def _chunks(self) -> list[Path]:
        return sorted(self.directory.glob("chunk-*.npz")) if self.enabled else []

    def completed(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Every stored (sample id, arrays) pair, chunk by chunk (constant memory per chunk)."""
        for chunk in self._chunks():
            with np.load(chunk, allow_pickle=False) as data:
                keys = data["__keys__"].tolist()
                arrays = {name: data[name] for name in data.files if name != "__keys__"}
            for row, key in enumerate(keys):
                yield key, {name: values[row] for name, values in arrays.items()}

    def stored(self, wanted: Collection[str], name: str) -> dict[str, np.ndarray]:
        """The stored array `name` of every sample in `wanted` that has one (the first stored, if repeated)."""
        found: dict[str, np.ndarray] = {}
        for key, arrays in self.completed():
            if key in wanted and key not in found:
                found[key] = arrays[name]
        return found

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Store the results of one sample (written when the buffer holds `chunk_size` samples)."""
        if not self.enabled:
            return
        self._buffer.append((key, {name: np.asarray(value) for name, value in arrays.items()}))
        if len(self._buffer) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        """Write buffered results as a new chunk file."""
        if not self.enabled or not self._buffer:
            return
        names = list(self._buffer[0][1])
        stacked = {name: np.stack([arrays[name] for _, arrays in self._buffer]) for name in names}
        stacked["__keys__"] = np.asarray([key for key, _ in self._buffer])
        existing = self._chunks()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.directory / f"chunk-{number:06d}.npz"
        with atomic_write(path) as handle:
            np.savez(handle, **stacked)
        self._buffer.clear()
