"""Which images a command reads and which files it writes for each: finding the images, naming the outputs.

Pure file-system code: nothing here imports torch, directly or indirectly (numpy and PIL only when a function runs).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .common import EXIT_USAGE, CLIError, print_line
from .options import OutputFormat

if TYPE_CHECKING:
    from rich.console import Console

    from ..batch.store import OutputStore


# File name endings per format; "rle" is one JSON file per image holding every prompt.
SUFFIXES = {
    OutputFormat.mask: ".png",
    OutputFormat.soft: ".soft.png",
    OutputFormat.heatmap: ".heatmap.jpg",
    OutputFormat.overlay: ".overlay.jpg",
    OutputFormat.cutout: ".cutout.png",
    OutputFormat.rle: ".rle.json",
}
PROMPT_SEPARATOR = "__"
LABEL_SUFFIX = ".labels.png"
LABEL_OVERLAY_SUFFIX = ".labels-overlay.jpg"
LEGEND_NAME = "labels.json"

Failure = tuple[str, str]  # (input, reason)


@dataclass
class Job:
    """One input image and the files it should produce."""

    source: Path | str  # a path, or a URI as given in a --manifest-in list
    stem: Path  # output folder / sanitised image name, without suffix
    # (kind, prompt index or None for one file per image) -> path
    files: dict[tuple[str, int | None], Path] = field(default_factory=dict)
    redo: bool = False  # the input changed since its files were written (watch mode): write them again

    def path(self, output: Path, suffix: str) -> Path:
        return output / self.stem.with_name(self.stem.name + suffix)

    def done(self, exists: Callable[[Path], bool] = Path.exists) -> bool:
        """True if every output exists (`exists`: the output store's test, default the local file system's)."""
        return all(exists(path) for path in self.files.values())


def plan_jobs(
    arguments: Sequence[Path],
    output: Path | None,
    console: Console,
    listed: Sequence[str] = (),
    *,
    suffixes: frozenset[str] | None = None,
    kind: str = "image",
) -> tuple[list[Job], list[Failure]]:
    """Find the images (or, with other `suffixes`, files of another `kind`) named or inside the folders
    (recursively, hidden entries and the output folder skipped) and give each a unique sanitised output stem that
    mirrors its place below the folder it was found in. The `listed` sources of a --manifest-in list (paths or URIs,
    checked when loaded) follow, each named after its file. `output` is the local output folder (None: remote)."""
    from ..batch.sources import is_uri

    found, failures = find_images(arguments, output, console, suffixes=suffixes, kind=kind)
    seen = {path.resolve() for path, _ in found}
    for text in listed:
        source: Path | str = text if is_uri(text) else Path(text)
        key = source if isinstance(source, str) else source.resolve()
        if key not in seen:
            seen.add(key)
            found.append((source, ()))
    stems = unique_stems(found)
    return [Job(path, stem) for (path, _), stem in zip(found, stems, strict=True)], failures


def find_images(
    arguments: Sequence[Path], output: Path | None, console: Console, *, suffixes: frozenset[str] | None = None,
    kind: str = "image",
) -> tuple[list[tuple[Path, tuple[str, ...]]], list[Failure]]:
    """Each image (file with one of `suffixes`, default the image suffixes) once, with the folders between it and
    the folder argument it was found in; a missing argument is a failure, a folder without such files a warning,
    the output folder given as an input a usage error."""
    if suffixes is None:
        from ..image import IMAGE_SUFFIXES as suffixes

    failures: list[Failure] = []
    found: list[tuple[Path, tuple[str, ...]]] = []
    seen: set[Path] = set()
    output_resolved = output.resolve() if output is not None else None
    for argument in arguments:
        if argument.is_dir() and argument.resolve() == output_resolved:
            raise CLIError(
                f"{argument} is both an input and the output folder (its outputs would be read as inputs next time): "
                f"write to a subfolder, e.g. -o {argument / 'masks'}",
                EXIT_USAGE,
            )
        if argument.is_dir():
            sources = [
                (path, path.relative_to(argument).parent.parts)
                for path in _walk(argument, output_resolved, suffixes)
            ]
            if not sources:
                print_line(console, f"warning: {argument}: no {kind} files found")
        elif argument.exists():
            sources = [(argument, ())]
        else:
            failures.append((str(argument), "no such file or directory"))
            continue
        for path, folders in sources:
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                found.append((path, folders))
    return found, failures


def unique_stems(found: Sequence[tuple[Path | str, tuple[str, ...]]]) -> list[Path]:
    """Sanitised output stems (folders / name, no suffix), unique without regard to case.

    Images whose names collide (photo.jpg and photo.png) get their suffix appended (photo_jpg, photo_png); stems
    that still collide (the sanitised names of "a b.jpg" and "a_b.jpg") get a hash of the image's full path."""
    from ..batch.sources import source_name
    from ..outputs import safe_name

    def stem_for(path: Path | str, folders: tuple[str, ...], extra: str = "") -> Path:
        name = safe_name(source_name(str(path))[0] + extra, fallback="image")
        return Path(*(safe_name(folder, fallback="folder") for folder in folders), name)

    def colliding(stems: list[Path]) -> set[int]:
        counts: dict[str, int] = {}
        for stem in stems:
            counts[str(stem).lower()] = counts.get(str(stem).lower(), 0) + 1
        return {index for index, stem in enumerate(stems) if counts[str(stem).lower()] > 1}

    stems = [stem_for(path, folders) for path, folders in found]
    for index in colliding(stems):
        path, folders = found[index]
        stems[index] = stem_for(path, folders, f"_{source_name(str(path))[1].lstrip('.')}")
    for index in colliding(stems):
        path, _ = found[index]
        identity = path if isinstance(path, str) else str(path.resolve())  # a URI is its own identity
        stems[index] = stems[index].with_name(f"{stems[index].name}-{_digest(identity)}")
    return stems


def plan_segment_outputs(jobs: Sequence[Job], output: Path, formats: Sequence[OutputFormat], names: list[str]) -> None:
    """Name each job's files for `clipseg segment`: NAME__PROMPT.SUFFIX per prompt and format, NAME.rle.json."""
    from ..outputs import unique_names

    slugs = unique_names(names, keep_dots=False)
    for job in jobs:
        for fmt in formats:
            if fmt == OutputFormat.rle:
                job.files[(fmt.value, None)] = job.path(output, SUFFIXES[fmt])
            else:
                for index, slug in enumerate(slugs):
                    job.files[(fmt.value, index)] = job.path(output, f"{PROMPT_SEPARATOR}{slug}{SUFFIXES[fmt]}")


def plan_label_outputs(jobs: Sequence[Job], output: Path) -> None:
    """Name each job's files for `clipseg labels`: NAME.labels.png and NAME.labels-overlay.jpg."""
    for job in jobs:
        job.files = {
            ("labels", None): job.path(output, LABEL_SUFFIX),
            ("overlay", None): job.path(output, LABEL_OVERLAY_SUFFIX),
        }


def prepare_output(output: Path | OutputStore) -> None:
    """Create the output folder, prove it is writable, and clear temporaries of runs that were killed."""
    from ..batch.store import OutputStore, OutputStoreError

    try:
        (output if isinstance(output, OutputStore) else OutputStore.open(output)).prepare()
    except OutputStoreError as error:
        raise CLIError(str(error)) from None


def _walk(root: Path, skip: Path | None, suffixes: frozenset[str]) -> Iterator[Path]:
    """Image files under `root`, following symlinked folders; a folder reached a second time (a link loop, or two
    links to one folder) is searched once, with a warning."""
    searched = {root.resolve()}
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        here = Path(directory)
        kept = []
        for name in sorted(subdirectories):
            real = (here / name).resolve()
            if name.startswith(".") or real == skip:
                continue
            if real in searched:
                warnings.warn(f"{here / name}: links to the folder {real}, which is already searched; skipped")
                continue
            searched.add(real)
            kept.append(name)
        subdirectories[:] = kept
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                yield here / name


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
