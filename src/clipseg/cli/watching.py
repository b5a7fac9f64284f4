"""`clipseg segment DIR --watch`: segment what is there, then every new or changed image as it appears.

Each round plans the jobs exactly as a normal run (same names, same writer, same one-line errors), so the only
differences are when a file is taken: once its size has stopped changing (`clipseg.watch.split_stable`), again when
its content changes (`clipseg.watch.WatchState`, a journal in the output folder), and never twice for the same
content when it failed. Ctrl-C or SIGTERM ends the watch: the file being written is finished or its temporary
removed, the summary is printed, and the exit status is 0 unless an input failed. A full output storage stops it as
it stops a normal run: one line, the summary, exit status 1.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .common import EXIT_FAILURES, EXIT_USAGE, CLIError, print_line
from .jobs import Failure, Job
from .runner import (
    RunSettings,
    StorageFull,
    Summary,
    Writer,
    counted_write,
    is_storage_full,
    make_predict,
    print_summary,
    record_outcome,
    storage_full_error,
)

if TYPE_CHECKING:
    from PIL import Image
    from rich.console import Console

    from ..batch.work import Predict
    from ..predictor import Prediction
    from ..prompts import Prompt
    from ..watch import Fingerprint, WatchState


def watch_jobs(
    inputs: Sequence[Path],
    output: Path,
    console: Console,
    *,
    plan: Callable[[Console], tuple[list[Job], list[Failure]]],
    prompts: Sequence[Prompt],
    negatives: Sequence[str],
    write: Writer,
    settings: RunSettings,
    settle: float,
) -> int:
    """Run until interrupted; returns the exit status. `plan` lists the jobs (files named) of the current folder
    contents, printing its warnings on the console it is given."""
    from rich.console import Console

    from ..batch.engines import run_batches
    from ..batch.sources import load_source
    from ..batch.store import OutputStore
    from ..image import IMAGE_SUFFIXES
    from ..watch import RESCAN_SECONDS, STATE_NAME, FolderEvents, WatchState, deferred_interrupts, split_stable

    folders = [path for path in inputs if path.is_dir()]
    if not folders:
        raise CLIError("--watch needs a folder to watch among the inputs", EXIT_USAGE)
    store = OutputStore.open(output)  # the local folder the writer writes to, for counting what it wrote
    state = WatchState(output / STATE_NAME)
    summary = Summary()
    seen: set[Path] = set()
    failed: dict[Path, tuple[int, int]] = {}  # input -> (size, mtime) when it failed: retried once it changes
    reported: set[str] = set()
    quiet = Console(quiet=True)  # warnings such as "no image files found" are printed in the first round only

    def round_(predict: Predict, first: bool = False) -> bool:
        """Segment every job that needs it; True if some file is still being written."""
        jobs, failures = plan(console if first else quiet)
        for source, reason in failures:
            if source not in reported:
                reported.add(source)
                summary.failures.append((source, reason))
                print_line(console, f"error: {source}: {reason}")
        todo, adopted = [], []
        for job in jobs:
            key = job.source.resolve()
            first_time = key not in seen
            seen.add(key)
            if _needs_work(job, state, settings.overwrite and first_time, failed.get(key)):
                todo.append(job)
            elif first_time:
                summary.skipped += 1
                if not state.known(job.source):
                    adopted.append(job.source)  # done by an earlier run: its content is what it was made from
        if adopted:
            try:
                state.record(adopted)
            except OSError as error:
                if not is_storage_full(error):
                    raise
                raise StorageFull(f"cannot write {error.filename}: {error.strerror}") from None
        summary.found = len(seen) + len(reported)
        ready, busy = split_stable([job.source for job in todo], settle)
        ready_jobs = [job for job in todo if job.source in set(ready)]
        for start in range(0, len(ready_jobs), settings.batch_size):
            batch = ready_jobs[start : start + settings.batch_size]
            read = _fingerprints(batch)  # what the files hold as they are read
            # The local engine's batch step (load, predict, write), on the model loaded once for the watch.
            outcomes = run_batches(
                [batch],
                engine="local",
                source_of=_source,
                load=load_source,
                make_predict=lambda: predict,
                # Counted as in a normal run: a full output storage stops the watch.
                write=functools.partial(counted_write, write_and_record(read), store),
            )
            for outcome in outcomes:
                record_outcome(outcome, summary, None, console, settings.debug)
                job = outcome.job
                if outcome.error is not None:
                    try:
                        failed[job.source.resolve()] = _stamp(job.source)
                    except OSError:
                        pass  # gone: if it comes back, it is tried again
                else:
                    failed.pop(job.source.resolve(), None)
                    _forget_failures(summary, job.source)
                    print_line(console, f"segmented {job.source}")
        return bool(busy)

    def write_and_record(read: dict[Path, Fingerprint]) -> Writer:
        """The writer, with the input recorded as done together with its outputs (a stop waits for both)."""

        def write_job(job: Job, image: Image.Image, prediction: Prediction) -> tuple[int, list[dict]]:
            with deferred_interrupts():
                written = write(job, image, prediction)
                if job.source in read:
                    state.remember({job.source: read[job.source]})
            return written

        return write_job

    with state:  # the journal is compacted however the watch ends
        try:  # a signal at any point, even while the model loads, ends the watch normally
            predict = make_predict(settings, list(prompts), list(negatives), console)
            print_line(console, f"watching {', '.join(map(str, folders))} for new and changed images (Ctrl-C to stop)")
            waiting = round_(predict, first=True)
            last_round = time.monotonic()
            for changes in FolderEvents(folders, suffixes=IMAGE_SUFFIXES, ignore=output, poll_seconds=settle):
                if changes or waiting or time.monotonic() - last_round > RESCAN_SECONDS:
                    waiting = round_(predict)
                    last_round = time.monotonic()
        except KeyboardInterrupt:
            print_line(console, "stopped watching")
        except StorageFull as full:
            raise storage_full_error(full, summary, output, settings.command) from None
    print_summary(summary, output, settings.command)
    return EXIT_FAILURES if summary.failures else 0


def _needs_work(job: Job, state: WatchState, overwrite: bool, failed_at: tuple[int, int] | None) -> bool:
    """Whether a job is (re)done this round: its files are missing, or its input changed since they were written
    (then marked `redo`), or --overwrite on the first sight; an input that failed waits until it changes."""
    try:
        if failed_at is not None and _stamp(job.source) == failed_at:
            return False
        if state.changed(job.source):
            job.redo = True
            return True
    except OSError:
        return False  # removed meanwhile
    job.redo = overwrite
    return overwrite or not job.done()


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _forget_failures(summary: Summary, source: Path) -> None:
    """A file that failed while it was incomplete and then succeeded is no failure."""
    summary.failures[:] = [(name, reason) for name, reason in summary.failures if name != str(source)]


def _fingerprints(jobs: Sequence[Job]) -> dict[Path, Fingerprint]:
    from ..watch import Fingerprint

    read = {}
    for job in jobs:
        try:
            read[job.source] = Fingerprint.of(job.source)
        except OSError:
            pass  # gone: loading it reports it
    return read


def _source(job: Job) -> str:
    return str(job.source)
