"""The run loop the image commands share: load the model once, segment the jobs in batches, report each bad input
as one line and keep going, print a summary. torch, numpy and PIL are imported only when a run starts."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..messages import shorten
from .common import (
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CLIError,
    load_engine_or_fail,
    one_line,
    print_line,
)
from .jobs import Failure, Job
from .options import Backend, Precision, TemplateSet

if TYPE_CHECKING:
    from PIL import Image
    from rich.console import Console

    from ..model.interface import SegmentationModel
    from ..predictor import Prediction, Predictor
    from ..prompts import Prompt

MAX_LISTED_FAILURES = 50

# Writes a job's files from its image and prediction; returns how many files it wrote.
Writer = Callable[[Job, "Image.Image", "Prediction"], int]


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

    @classmethod
    def from_arguments(cls, command: str, arguments: Mapping[str, Any]) -> RunSettings:
        """The settings of `command`, taken by name from its arguments (a command passes its `locals()`)."""
        return cls(command=command, **{f.name: arguments[f.name] for f in fields(cls) if f.name != "command"})


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
    output: Path,
    console: Console,
    *,
    prompts: Sequence[Prompt],
    negatives: Sequence[str],
    write: Writer,
    settings: RunSettings,
    on_model: Callable[[SegmentationModel], None] | None = None,
) -> int:
    """Segment the jobs whose outputs are missing (all with --overwrite), print the summary; returns the exit
    status. `on_model` sees the loaded model before the first image (e.g. to read its calibrated thresholds)."""
    summary = Summary(found=len(jobs) + len(failures), failures=list(failures))
    for source, reason in failures:
        print_line(console, f"error: {source}: {reason}")
    if not jobs and not failures:
        raise CLIError("no images to segment", EXIT_USAGE)
    todo = [job for job in jobs if settings.overwrite or not job.done()]
    summary.skipped = len(jobs) - len(todo)
    if not todo:
        return _finish(summary, output, settings.command)
    from ..predictor import Predictor
    from ..progress import progress_bar

    loaded = load_engine_or_fail(
        settings.model,
        backend=settings.backend,
        precision=settings.precision,
        device=settings.device,
        clip=settings.clip,
        extract_layers=settings.extract_layers,
        console=console,
    )
    if on_model is not None:
        on_model(loaded)
    predictor = Predictor(loaded)
    predict_options = {"templates": settings.templates.value, "ensemble": settings.ensemble}
    try:
        with progress_bar(console=console, disable=not console.is_terminal) as progress:
            task = progress.add_task("segmenting", total=len(todo))
            for start in range(0, len(todo), settings.batch_size):
                batch = todo[start : start + settings.batch_size]
                progress.update(task, description=shorten(batch[0].source.name, 30))
                _run_batch(
                    batch, predictor, prompts, negatives, predict_options, write, summary, console, settings.debug
                )
                progress.advance(task, len(batch))
    except KeyboardInterrupt:
        print_line(console, "interrupted: finished files are kept; run the same command again to do the rest")
        _print_summary(summary, output, settings.command)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    return _finish(summary, output, settings.command)


def _run_batch(
    batch: list[Job],
    predictor: Predictor,
    prompts: Sequence[Prompt],
    negatives: Sequence[str],
    predict_options: dict,
    write: Writer,
    summary: Summary,
    console: Console,
    debug: bool,
) -> None:
    from ..image import load_image

    def fail(job: Job, error: BaseException) -> None:
        reason = (
            one_line(error)
            if isinstance(error, (OSError, ValueError))
            else f"{type(error).__name__}: {one_line(error)}"
        )
        reason = reason if str(job.source) in reason else f"{job.source}: {reason}"
        summary.failures.append((str(job.source), reason.removeprefix(f"{job.source}: ")))
        print_line(console, f"error: {reason}")
        if debug:
            traceback.print_exc()

    loaded: list[tuple[Job, Image.Image]] = []
    for job in batch:
        try:
            loaded.append((job, load_image(job.source)))
        except Exception as error:  # every unreadable file is reported and skipped, the run goes on
            fail(job, error)
    if not loaded:
        return
    try:
        predictions = predictor.predict_batch(
            [image for _, image in loaded], list(prompts), negative=list(negatives), **predict_options
        )
    except Exception as error:
        for job, _ in loaded:
            fail(job, error)
        return
    for (job, image), prediction in zip(loaded, predictions, strict=True):
        try:
            summary.files_written += write(job, image, prediction)
            summary.segmented += 1
        except Exception as error:
            fail(job, error)


def _finish(summary: Summary, output: Path, command: str) -> int:
    _print_summary(summary, output, command)
    return EXIT_FAILURES if summary.failures else 0


def _print_summary(summary: Summary, output: Path, command: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    table = Table(title=f"clipseg {command}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("images", str(summary.found))
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
            failed.add_row(Text(source), Text(reason))
        if len(summary.failures) > MAX_LISTED_FAILURES:
            failed.add_row(f"… and {len(summary.failures) - MAX_LISTED_FAILURES} more", "")
        console.print(failed)
