"""One batch of segmentation work, the unit both engines run: the local CLI loop and each Ray actor.

Images are loaded (or their loading error kept), the model runs once over the loaded ones, each image's outputs
are written; every image ends as one `Outcome`: files written and manifest rows, or a one-line error.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..messages import one_line

if TYPE_CHECKING:
    from PIL import Image

    from ..predictor import Prediction

JobT = TypeVar("JobT")
# Writes one image's outputs; returns (files written, manifest rows).
Writer = Callable[[JobT, "Image.Image", "Prediction"], tuple[int, list[dict[str, Any]]]]
# Runs the model over a batch of images (Predictor.predict_batch with the run's prompts bound).
Predict = Callable[[list["Image.Image"]], list["Prediction"]]


@dataclass
class Outcome(Generic[JobT]):
    """What became of one image: `error` is None on success."""

    job: JobT
    files_written: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    trace: str | None = None  # traceback of the error, for --debug
    storage_full: bool = False  # the output storage took no more files: every further image would fail too


def failure_reason(source: str, error: BaseException) -> str:
    """A one-line reason for a failed image, without the source name in front (the caller names it)."""
    text = one_line(error)
    if isinstance(error, OSError) and error.filename and str(error.filename) != source:
        return f"cannot write {error.filename}: {error.strerror or text}"  # an output file, not the input
    reason = text if isinstance(error, (OSError, ValueError)) else f"{type(error).__name__}: {text}"
    return reason.removeprefix(f"{source}: ")


def run_batch(
    loaded: Sequence[tuple[JobT, Image.Image | BaseException]],
    source_of: Callable[[JobT], str],
    predict: Predict,
    write: Writer,
) -> list[Outcome[JobT]]:
    """Predict the loaded images in one call and write each one's outputs; `loaded` pairs each job with its image
    or with the exception loading it raised. One outcome per job, in order."""
    outcomes = {id(job): _failed(job, value, source_of) for job, value in loaded if isinstance(value, BaseException)}
    images = [(job, value) for job, value in loaded if not isinstance(value, BaseException)]
    if images:
        try:
            predictions = predict([image for _, image in images])
        except Exception as error:  # a batch the model cannot run fails its images; the run goes on
            predictions = None
            outcomes.update({id(job): _failed(job, error, source_of) for job, _ in images})
        full: Outcome[JobT] | None = None
        for (job, image), prediction in zip(images, predictions or [], strict=False):
            if full is not None:  # the storage is full: the rest of the batch would fail the same way
                outcomes[id(job)] = Outcome(job, error=full.error, storage_full=True)
                continue
            try:
                written, rows = write(job, image, prediction)
                outcomes[id(job)] = Outcome(job, written, rows)
            except Exception as error:
                outcome = outcomes[id(job)] = _failed(job, error, source_of)
                # Set by the CLI's writer: the files written before the error, and a full output storage.
                outcome.files_written = getattr(error, "files_written", 0)
                outcome.storage_full = getattr(error, "storage_full", False)
                full = outcome if outcome.storage_full else None
    return [outcomes[id(job)] for job, _ in loaded]


def load_batch(
    jobs: Sequence[JobT], load: Callable[[JobT], Image.Image]
) -> list[tuple[JobT, Image.Image | BaseException]]:
    """Each job with its loaded image, or with the exception loading raised (every unreadable file is reported
    and skipped, the run goes on)."""
    loaded: list[tuple[JobT, Image.Image | BaseException]] = []
    for job in jobs:
        try:
            loaded.append((job, load(job)))
        except Exception as error:
            loaded.append((job, error))
    return loaded


def _failed(job: JobT, error: BaseException, source_of: Callable[[JobT], str]) -> Outcome[JobT]:
    trace = "".join(traceback.format_exception(error))
    return Outcome(job, error=failure_reason(source_of(job), error), trace=trace)
