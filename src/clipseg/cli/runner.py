"""The run loop the image commands share: load the model once, segment the jobs in batches, report each bad input
as one line and keep going, print a summary. The batches run in this process or on Ray (`clipseg.batch`), through
the same loader and writer. torch, numpy and PIL are imported only when a run starts."""

from __future__ import annotations

import errno
import functools
import itertools
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..batch.ray_engine import RayEngineError
from ..batch.sources import source_name, without_credentials
from ..messages import shorten
from .common import (
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CLIError,
    load_engine_or_fail,
    print_line,
)
from .jobs import Failure, Job
from .options import Backend, Precision, TemplateSet
from .resolution import Resolution

if TYPE_CHECKING:
    from PIL import Image
    from rich.console import Console

    from ..batch.manifest import ManifestWriter
    from ..batch.store import OutputStore
    from ..batch.work import Outcome
    from ..predictor import Prediction, Predictor
    from ..prompts import Prompt

MAX_LISTED_FAILURES = 50

# Writes a job's files from its image and prediction; returns (files written, manifest rows).
Writer = Callable[[Job, "Image.Image", "Prediction"], tuple[int, list[dict]]]
# Write errors after which every further image would fail the same way: the run stops.
_STORAGE_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS})


class StorageFull(Exception):
    """The output folder cannot take more files (full disk, quota, read-only file system): the run stops."""


def is_storage_full(error: BaseException) -> bool:
    """Whether a write error means every further write would fail the same way."""
    return isinstance(error, OSError) and error.errno in _STORAGE_FULL


def storage_full_error(
    reason: object, summary: Summary, output: Path | str, command: str, *, left: str = "", inputs: str = "images"
) -> CLIError:
    """Print the summary; the one-line error that stops a run on a full output storage (`left`: what is not
    done, e.g. ", 3 images not done")."""
    print_summary(summary, output, command, inputs=inputs)
    return CLIError(
        f"{reason} ({summary.files_written} files written{left}); free space and run the same command again to do "
        "the rest"
    )


@dataclass(frozen=True)
class RunSettings:
    """The options `segment` and `labels` share: which model, and how to run it over the images."""

    command: str
    model: str
    clip: str | None
    extract_layers: str | None
    device: str
    precision: Precision
    backend: Backend
    batch_size: int
    overwrite: bool
    templates: TemplateSet
    ensemble: bool
    debug: bool
    resolution: Resolution = field(default_factory=Resolution)

    @classmethod
    def from_arguments(cls, command: str, arguments: Mapping[str, Any]) -> RunSettings:
        """The settings of `command`, taken by name from its arguments (a command passes its `locals()`);
        `resolution` is added with `dataclasses.replace` once its options are checked."""
        names = [f.name for f in fields(cls) if f.name not in ("command", "resolution")]
        return cls(command=command, **{name: arguments[name] for name in names})


@dataclass(frozen=True)
class EngineSettings:
    """Where the model runs: --engine, --ray-address, --workers."""

    name: str = "local"
    ray_address: str | None = None
    workers: int | None = None


@dataclass
class Summary:
    found: int = 0
    segmented: int = 0
    skipped: int = 0
    files_written: int = 0
    failures: list[Failure] = field(default_factory=list)


def prompt_texts(values: list[str] | None, option: str) -> list[str]:
    """The texts given with a repeatable prompt option, each once; an empty one is a usage error."""
    texts = []
    for value in values or []:
        if not value.strip():
            raise CLIError(f"empty prompt: {option} needs text, e.g. {option} 'a cup'", EXIT_USAGE)
        texts.append(value)
    return list(dict.fromkeys(texts))


def limit_pixels(max_pixels: int | None) -> None:
    """--max-pixels: Pillow's decompression-bomb limit (0: none)."""
    if max_pixels is not None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = max_pixels or None


def exit_with(status: int) -> None:
    if status:
        raise typer.Exit(status)


def run_jobs(
    jobs: list[Job],
    failures: list[Failure],
    output: Path | OutputStore,
    console: Console,
    *,
    prompts: Sequence[Prompt],
    negatives: Sequence[str],
    write: Writer,
    settings: RunSettings,
    engine: EngineSettings = EngineSettings(),
    manifest: ManifestWriter | None = None,
) -> int:
    """Segment the jobs whose outputs (and manifest rows) are missing (all with --overwrite), print the summary;
    returns the exit status. One run at a time per local output folder (an OS lock, released when the process dies;
    `clipseg.batch.store` says why a remote folder has none)."""
    from ..batch.store import OutputStore

    store = output if isinstance(output, OutputStore) else OutputStore.open(output)
    with output_lock(store):
        summary = Summary(found=len(jobs) + len(failures), failures=list(failures))
        for source, reason in failures:
            print_line(console, without_credentials(f"error: {source}: {reason}"))
        if not jobs and not failures:
            raise CLIError("no images to segment", EXIT_USAGE)
        if manifest is not None:
            manifest.add(manifest.failure(source, reason) for source, reason in failures)
        exists = store.existing_files()
        todo = [job for job in jobs if settings.overwrite or not _done(job, manifest, exists)]
        summary.skipped = len(jobs) - len(todo)
        try:
            if todo:
                _segment(todo, console, prompts, negatives, write, settings, engine, summary, manifest, store)
        except KeyboardInterrupt:
            if manifest is not None:
                manifest.flush()
            print_line(console, "interrupted: finished files are kept; run the same command again to do the rest")
            print_summary(summary, store.name, settings.command)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except StorageFull as full:
            if manifest is not None:
                manifest.flush()
            not_done = len(todo) - summary.segmented - (len(summary.failures) - len(failures))
            left = f", {not_done} images not done"
            raise storage_full_error(full, summary, store.name, settings.command, left=left) from None
        if manifest is not None:
            manifest.close([str(job.source) for job in jobs] + [source for source, _ in failures])
        # Again at the end: a killed run's Ray workers may have outlived the start of this one.
        store.remove_stale_temporaries()
        return finish(summary, store.name, settings.command)


@contextmanager
def output_lock(store: OutputStore) -> Iterator[None]:
    """Hold the output folder's lock for the run; another run holding it is a one-line error."""
    from ..fileio import FolderLockedError

    try:
        with store.lock():
            yield
    except FolderLockedError as error:
        raise CLIError(str(error)) from None


def _done(job: Job, manifest: ManifestWriter | None, exists: Callable[[Path], bool]) -> bool:
    return job.done(exists) and (manifest is None or manifest.finished(str(job.source)))


def _segment(
    todo: list[Job],
    console: Console,
    prompts: Sequence[Prompt],
    negatives: Sequence[str],
    write: Writer,
    settings: RunSettings,
    engine: EngineSettings,
    summary: Summary,
    manifest: ManifestWriter | None,
    store: OutputStore,
) -> None:
    """Run the jobs in batches of --batch-size on the chosen engine, recording each image's outcome."""
    from PIL import Image

    from ..batch.engines import run_batches
    from ..progress import progress_bar

    batches = [todo[start : start + settings.batch_size] for start in range(0, len(todo), settings.batch_size)]
    outcomes = run_batches(
        batches,
        engine=engine.name,
        source_of=_source,
        # Pillow's decompression-bomb limit as this process has it (--max-pixels), for loaders in other processes.
        load=functools.partial(_load_with_pixel_limit, Image.MAX_IMAGE_PIXELS),
        # Built where the model runs (in each Ray actor): only picklable things go in, no console there.
        make_predict=functools.partial(
            make_predict, settings, list(prompts), list(negatives), console if engine.name == "local" else None
        ),
        write=functools.partial(counted_write, write, store),
        ray_address=engine.ray_address,
        workers=engine.workers,
    )
    try:
        # The first outcome comes after the model has loaded (with its own spinner) or Ray has started.
        first = next(outcomes, None)
        with progress_bar(console=console, disable=not console.is_terminal) as progress:
            task = progress.add_task("segmenting", total=len(todo))
            for outcome in itertools.chain([] if first is None else [first], outcomes):
                record_outcome(outcome, summary, manifest, console, settings.debug)
                progress.update(task, advance=1, description=shorten(source_name(_source(outcome.job))[0], 30))
    except RayEngineError as error:
        raise CLIError(str(error)) from None


def _source(job: Job) -> str:
    return str(job.source)


def make_predict(
    settings: RunSettings, prompts: list[Prompt], negatives: list[str], console: Console | None
) -> Callable[[list[Image.Image]], list[Prediction]]:
    """Load the model and return the function that runs it over a batch of images with the run's prompts."""
    predictor = load_predictor(settings, console)
    options = {
        "templates": settings.templates.value,
        "ensemble": settings.ensemble,
        "tiles": settings.resolution.tiles,
    }
    method, threshold = settings.resolution.refine, settings.resolution.refine_threshold

    def predict(images: list[Image.Image]) -> list[Prediction]:
        predictions = predictor.predict_batch(images, prompts, negative=negatives, **options)
        if method is None:
            return predictions
        return [prediction.refined(image, method, threshold) for prediction, image in zip(predictions, images, strict=True)]

    return predict


def load_predictor(settings: RunSettings, console: Console | None) -> Predictor:
    """A `Predictor` on the model the settings name (every loading problem is a one-line CLIError)."""
    from ..predictor import Predictor

    model = load_engine_or_fail(
        settings.model,
        backend=settings.backend,
        precision=settings.precision,
        device=settings.device,
        clip=settings.clip,
        extract_layers=settings.extract_layers,
        console=console,
    )
    return Predictor(model)


def record_outcome(
    outcome: Outcome[Job], summary: Summary, manifest: ManifestWriter | None, console: Console, debug: bool
) -> None:
    """Count an image's outcome in the summary (and the manifest); a failure is printed as one line."""
    source = _source(outcome.job)
    if outcome.error is None:
        summary.segmented += 1
        summary.files_written += outcome.files_written
        if manifest is not None:
            manifest.add(outcome.rows)
        return
    summary.files_written += outcome.files_written  # what the image wrote before its error
    if outcome.storage_full:
        raise StorageFull(outcome.error)
    summary.failures.append((source, outcome.error))
    print_line(console, without_credentials(f"error: {source}: {outcome.error}"))
    if debug and outcome.trace:
        print(outcome.trace, file=sys.stderr, end="")
    if manifest is not None:
        manifest.add([manifest.failure(source, outcome.error)])


def report_failure(summary: Summary, console: Console, source: Path, error: BaseException, debug: bool) -> None:
    """Count `source` (an input segmented outside the batch engines, e.g. a video) as failed and print one line
    naming it (the traceback too with --debug)."""
    from ..batch.work import failure_reason

    reason = failure_reason(str(source), error)
    summary.failures.append((str(source), reason))
    print_line(console, without_credentials(f"error: {source}: {reason}"))
    if debug:
        traceback.print_exc()


def _load_with_pixel_limit(pixel_limit: int | None, source: str) -> Image.Image:
    """`load_source` under the driver's pixel limit (set here too: Ray's workers are other, long-lived processes)."""
    from PIL import Image

    from ..batch.sources import load_source

    Image.MAX_IMAGE_PIXELS = pixel_limit
    return load_source(source)


def counted_write(
    write: Writer, store: OutputStore, job: Job, image: Image.Image, prediction: Prediction
) -> tuple[int, list[dict]]:
    """`write`; when it fails, the error carries how many of the job's files it did write (an atomic write either
    replaced a file or left it) and whether the output storage is full (the run then stops)."""
    before = _file_states(job, store)
    try:
        return write(job, image, prediction)
    except OSError as error:
        error.files_written = sum(_file_states(job, store)[path] != state for path, state in before.items())
        error.storage_full = is_storage_full(error)
        raise


def _file_states(job: Job, store: OutputStore) -> dict[Path, tuple[int, int] | None]:
    """`OutputStore.state` of each output file of a job."""
    return {path: store.state(path) for path in job.files.values()}


def finish(summary: Summary, output: Path | str, command: str, *, inputs: str = "images") -> int:
    """Print the summary; the exit status: 1 if an input failed, else 0."""
    print_summary(summary, output, command, inputs=inputs)
    return EXIT_FAILURES if summary.failures else 0


def print_summary(summary: Summary, output: Path | str, command: str, *, inputs: str = "images") -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    table = Table(title=f"clipseg {command}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row(inputs, str(summary.found))
    table.add_row("segmented", str(summary.segmented))
    table.add_row("skipped (outputs exist; --overwrite redoes them)", str(summary.skipped))
    table.add_row("failed", str(len(summary.failures)))
    table.add_row("files written", str(summary.files_written))
    table.add_row("output folder", Text(str(output)))
    console.print(table)
    if summary.failures:
        failed = Table(title="failed inputs", show_lines=False)
        failed.add_column("input", overflow="fold")
        failed.add_column("reason", overflow="fold")
        for source, reason in summary.failures[:MAX_LISTED_FAILURES]:
            failed.add_row(Text(without_credentials(str(source))), Text(without_credentials(reason)))
        if len(summary.failures) > MAX_LISTED_FAILURES:
            failed.add_row(f"… and {len(summary.failures) - MAX_LISTED_FAILURES} more", "")
        console.print(failed)

