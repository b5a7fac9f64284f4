"""Where a run's outputs go: a local folder, or a folder on any pyarrow file system (`-o masks/`,
`-o file:///abs/masks`, `-o s3://bucket/masks`, gs://, hdfs://, abfs://).

One writer serves both engines (the local loop and the Ray actors); every write keeps the local CLI's guarantees:
- nothing partial under a final name: a local folder (plain path or file://) gets a temporary beside the file,
  renamed onto it (`clipseg.fileio`); an object store (S3, GCS, Azure) gets one upload per file, and an object
  only becomes visible when its upload completes (a killed upload leaves no object); any other file system
  (HDFS) gets a temporary beside the file, moved onto it;
- resume: a file counts as done when the file system has it (one listing of the folder up front, so an object
  store is not asked once per file);
- confinement: every path written lies below the folder (no ".." from an image name or a prompt).

The run lock is the local folder's OS lock (`clipseg.fileio.folder_lock`, released when its holder dies). An object
store has no lock that a killed process releases, so a remote folder is not locked: two runs onto one remote folder
only duplicate work (each file is uploaded whole, with the same bytes), but a manifest both write is the last
writer's; give concurrent runs their own --manifest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from ..messages import first_line
from .sources import is_uri, without_credentials

if TYPE_CHECKING:
    from pyarrow import fs

PROBE_NAME = ".clipseg-write-test"
# pyarrow file systems whose uploads are atomic (an object appears whole or not at all), by class name: their
# modules are optional parts of pyarrow.
OBJECT_STORES = frozenset({"S3FileSystem", "GcsFileSystem", "AzureFileSystem"})
class OutputStoreError(ValueError):
    """The output folder cannot be opened or written (one line naming it)."""


@dataclass(frozen=True)
class OutputStore:
    """An output folder: `root` is a local folder (`filesystem` None) or a folder inside a pyarrow file system
    ("bucket/masks" on S3). Output paths are `root / relative` on either; picklable (Ray actors write through it).
    """

    name: str  # as the user gave it, credentials removed: for messages
    root: Path
    filesystem: fs.FileSystem | None = None

    @classmethod
    def open(cls, target: str | os.PathLike) -> OutputStore:
        """The store `target` names: a local path, or a URI pyarrow's `FileSystem.from_uri` opens (file:// is a
        local folder). Raises OutputStoreError for a URI pyarrow does not know or cannot open."""
        text = os.fspath(target)
        if not is_uri(text):
            return cls(str(Path(text)), Path(text))
        name = without_credentials(text)
        try:
            from pyarrow import fs
        except ImportError:
            raise OutputStoreError(f"{name}: an output URI needs pyarrow: pip install 'clipseg[ray]'") from None
        try:
            filesystem, path = fs.FileSystem.from_uri(text)
        except (ValueError, OSError, TypeError) as error:
            raise OutputStoreError(without_credentials(f"{name}: not a location pyarrow can open ({first_line(error)})")) from None
        if isinstance(filesystem, fs.LocalFileSystem):
            return cls(name, Path(path))
        if not path.strip("/") or ".." in PurePosixPath(path).parts:
            raise OutputStoreError(f"{name}: name a folder, e.g. s3://bucket/masks")
        return cls(name, Path(PurePosixPath(path)), filesystem)

    @classmethod
    def open_file(cls, target: str | os.PathLike) -> tuple[OutputStore, Path]:
        """(the store of the folder holding the file `target` names, the file's path in it)."""
        store = cls.open(target)
        if not store.root.name:
            raise OutputStoreError(f"{store.name}: name a file, e.g. s3://bucket/manifest.parquet")
        return replace(store, root=store.root.parent), store.root

    @property
    def local(self) -> Path | None:
        """The local folder, or None for a remote one."""
        return self.root if self.filesystem is None else None

    def describe(self, path: Path) -> str:
        """`path` as the user reads it: a local path, or scheme://bucket/key."""
        if self.filesystem is None:
            return str(path)
        scheme = self.name.split("://", 1)[0]
        return f"{scheme}://{_key(path)}"

    def relative(self, path: Path) -> str:
        """`path` relative to the folder, "/"-separated (the manifest's `mask` column)."""
        return self._inside(path).as_posix()

    def prepare(self) -> None:
        """Create the folder, prove it is writable (a probe file written and deleted) and, locally, clear the
        temporaries of killed runs. Raises OutputStoreError naming the folder."""
        probe = self.root / PROBE_NAME
        try:
            self.make_folder()
            self.write(probe, b"")
            self.delete(probe)
        except OSError as error:
            reason = without_credentials(error.strerror or first_line(error))
            raise OutputStoreError(f"cannot write to output folder {self.name}: {reason}") from None
        self.remove_stale_temporaries()

    def make_folder(self) -> None:
        """Create the folder (and its parents) if missing. Raises OSError."""
        if self.filesystem is None:
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.filesystem.create_dir(_key(self.root), recursive=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock (a local folder's OS lock; a remote folder has none, see the module docstring).
        Raises clipseg.fileio.FolderLockedError when another run holds it."""
        if self.filesystem is not None:
            yield
            return
        from ..fileio import folder_lock

        with folder_lock(self.root):
            yield

    def remove_stale_temporaries(self) -> None:
        """Delete the temporaries killed runs left in a local folder (uploads leave none)."""
        if self.filesystem is None:
            from ..fileio import remove_stale_temporaries

            remove_stale_temporaries(self.root)

    def existing_files(self) -> Callable[[Path], bool]:
        """A test "does this output exist", from one listing of the folder (a local folder is asked per file)."""
        if self.filesystem is None:
            return Path.exists
        from pyarrow import fs

        listing = self.filesystem.get_file_info(fs.FileSelector(_key(self.root), allow_not_found=True, recursive=True))
        present = {info.path.strip("/") for info in listing if info.type != fs.FileType.NotFound}
        return lambda path: _key(path) in present

    def exists(self, path: Path) -> bool:
        """True if the file (or a folder) exists at `path`."""
        if self.filesystem is None:
            return path.exists()
        from pyarrow import fs

        self._inside(path)
        return self.filesystem.get_file_info(_key(path)).type != fs.FileType.NotFound

    def state(self, path: Path) -> tuple[int, int] | None:
        """Something that changes when `path` is written again (local: inode and mtime; remote: size and mtime),
        None if it does not exist."""
        if self.filesystem is None:
            try:
                info = path.stat()
            except OSError:
                return None
            return info.st_ino, info.st_mtime_ns
        from pyarrow import fs

        try:
            info = self.filesystem.get_file_info(_key(path))
        except OSError:
            return None
        if info.type == fs.FileType.NotFound:
            return None
        return info.size or 0, info.mtime_ns or 0

    def write(self, path: Path, data: bytes) -> None:
        """Replace the file at `path` (below the folder) with `data`, never leaving a partial file under its name.
        Raises OSError naming the file."""
        self._inside(path)
        if self.filesystem is None:
            from ..fileio import write_bytes

            write_bytes(path, data)
            return
        key = _key(path)
        try:
            if type(self.filesystem).__name__ in OBJECT_STORES:
                # One upload: the object is created only when it completes (a failed or killed upload is aborted
                # or never committed), so no reader ever sees part of it.
                with self.filesystem.open_output_stream(key) as stream:
                    stream.write(data)
            else:
                parent = key.rsplit("/", 1)[0]
                self.filesystem.create_dir(parent, recursive=True)
                temporary = f"{parent}/.clipseg-{os.getpid()}-{secrets.token_hex(6)}.tmp"
                try:
                    with self.filesystem.open_output_stream(temporary) as stream:
                        stream.write(data)
                    self.filesystem.move(temporary, key)
                except BaseException:
                    with contextlib.suppress(OSError):
                        self.filesystem.delete_file(temporary)
                    raise
        except OSError as error:
            raise OSError(error.errno or errno.EIO, without_credentials(first_line(error)), self.describe(path)) from None

    def delete(self, path: Path) -> None:
        """Delete the file at `path` (missing is fine)."""
        if self.filesystem is None:
            path.unlink(missing_ok=True)
        elif self.exists(path):
            self.filesystem.delete_file(_key(path))

    def delete_folder(self, folder: Path) -> None:
        """Delete the folder `folder` (below the store's) and everything in it (missing is fine)."""
        self._inside(folder)
        if self.filesystem is None:
            shutil.rmtree(folder, ignore_errors=True)
        elif self.exists(folder):
            self.filesystem.delete_dir(_key(folder))

    def files(self, folder: Path) -> list[Path]:
        """The files directly in `folder`, sorted by name (none if it is missing)."""
        if self.filesystem is None:
            return sorted(path for path in folder.glob("*") if path.is_file()) if folder.is_dir() else []
        from pyarrow import fs

        listing = self.filesystem.get_file_info(fs.FileSelector(_key(folder), allow_not_found=True))
        return sorted(folder / info.base_name for info in listing if info.type == fs.FileType.File)

    def open_input(self, path: Path) -> BinaryIO:
        """The file at `path`, open for reading (random access: pyarrow reads Parquet footers first)."""
        if self.filesystem is None:
            return open(path, "rb")  # noqa: SIM115 (the caller closes it)
        return self.filesystem.open_input_file(_key(path))

    def _inside(self, path: Path) -> PurePosixPath:
        """`path` relative to the folder; ValueError if it is not below it (a name that escaped sanitising)."""
        try:
            relative = PurePosixPath(Path(path).relative_to(self.root).as_posix())
        except ValueError:
            relative = None
        if relative is None or not relative.parts or ".." in relative.parts:
            raise ValueError(f"{path}: not a file inside the output folder {self.name}")
        return relative


def joined(target: str, name: str) -> str:
    """`target` (a path, or a URI whose query is kept) with `name` appended to its path."""
    if not is_uri(target):
        return str(Path(target) / name)
    parts = urlsplit(target)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def _key(path: Path) -> str:
    """A path as pyarrow's file systems spell it: "/"-separated, no leading or trailing "/"."""
    return path.as_posix().strip("/")


