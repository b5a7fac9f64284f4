"""The Ray Data engine: the same jobs, batches, model calls and writer as the local loop, spread over a cluster.

Pipeline: the planned batches (rows of job indices and sources) -> decode on CPU tasks (raw RGB pixels, or the
loading error) -> `map` on an actor pool, one model per actor (a GPU each when the cluster has GPUs), running
`work.run_batch` (backbone batched over the images, decoder over the prompts, outputs written atomically by the
shared writer) -> one result row per batch streamed back to the driver, which feeds the manifest. Ray Data's
streaming executor bounds what is in flight, so memory does not grow with the number of images.

The batches are the local engine's batches (same images together), so every output has the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Generic

from .work import JobT, Outcome, Predict, Writer, load_batch, run_batch

if TYPE_CHECKING:
    from PIL import Image

# CPU share of one decode task: small, so decoding keeps going beside a pool that holds most CPUs.
DECODE_CPUS = 0.5


class RayEngineError(RuntimeError):
    """Ray could not be started or reached, or the actor pool could not start."""


def default_workers(resources: dict[str, float]) -> int:
    """Model actors by default: one per GPU of the cluster, else one per 2 CPUs (at least one)."""
    gpus = int(resources.get("GPU", 0))
    return gpus if gpus else max(1, int(resources.get("CPU", 1) // 2))


def actor_resources(resources: dict[str, float], workers: int) -> tuple[dict[str, float], int]:
    """(Ray resource request of one model actor, torch threads it runs) for `workers` actors on the cluster."""
    gpus = resources.get("GPU", 0.0)
    cpus = resources.get("CPU", 1.0)
    if gpus:
        return {"num_gpus": min(1.0, gpus / workers), "num_cpus": min(1.0, cpus / workers)}, 1
    threads = max(1, int(cpus // workers))
    # Leave room for a decode task whatever the number of actors (else the pipeline would wait forever).
    share = max(0.01, min(float(threads), (cpus - DECODE_CPUS) / workers))
    return {"num_cpus": round(share, 3)}, threads


def run_on_ray(
    batches: Sequence[Sequence[JobT]],
    *,
    source_of: Callable[[JobT], str],
    load: Callable[[str], Image.Image],
    make_predict: Callable[[], Predict],
    write: Writer,
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[Outcome[JobT]]:
    """Run the batches on Ray, yielding each image's outcome as its batch finishes (in no fixed order).

    Args:
        batches: the jobs, grouped as the model should see them.
        source_of: a job's source (path or URI) as the decode tasks read it.
        load: decodes a source (runs in the decode tasks).
        make_predict: builds the model-calling function (runs once in each actor: loads the model there).
        write: writes one image's outputs (runs in the actors), returns (files written, manifest rows).
        address: an existing cluster ("auto", "ray://host:10001", "host:6379"); None starts a local one unless
            this process is already connected (a notebook's or a test's `ray.init`).
        workers: model actors; None = `default_workers`.
    """
    import ray

    started = _connect(address)
    try:
        yield from _run(batches, source_of, load, make_predict, write, workers)
    finally:
        if started:
            ray.shutdown()


def _run(
    batches: Sequence[Sequence[JobT]],
    source_of: Callable[[JobT], str],
    load: Callable[[str], Image.Image],
    make_predict: Callable[[], Predict],
    write: Writer,
    workers: int | None,
) -> Iterator[Outcome[JobT]]:
    import ray
    import ray.data

    jobs = [job for batch in batches for job in batch]
    if not jobs:
        return
    resources = ray.cluster_resources()
    workers = workers or default_workers(resources)
    request, threads = actor_resources(resources, workers)
    items = []
    first = 0
    for batch in batches:
        indices = list(range(first, first + len(batch)))
        # The jobs travel with their rows (Ray stores them as Python objects): no actor holds the whole plan.
        items.append({"indices": indices, "sources": [source_of(job) for job in batch], "jobs": list(batch)})
        first += len(batch)
    dataset = (
        ray.data.from_items(items, override_num_blocks=min(len(items), 200 * workers))
        .map(_Decode(load), num_cpus=DECODE_CPUS)
        .map(
            _Segment,
            fn_constructor_kwargs={
                "source_of": source_of, "make_predict": make_predict, "write": write, "threads": threads
            },
            compute=ray.data.ActorPoolStrategy(size=workers),
            # A model actor whose process dies (killed, out of memory, node lost) is restarted and its batch run
            # again: the writer skips the files the lost attempt finished, and its partial files are temporaries.
            max_restarts=-1,
            max_task_retries=-1,
            **request,
        )
    )
    try:
        for row in dataset.iter_rows():
            for record in json.loads(row["outcomes"]):
                index = record.pop("index")
                yield Outcome(jobs[index], **record)
    except Exception as error:
        raise _unwrapped(error) from None


class _Decode:
    """Decode task: a batch's sources -> raw RGB pixels and sizes, or the loading error (as a one-line text)."""

    def __init__(self, load: Callable[[str], Image.Image]) -> None:
        self.load = load

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from .work import failure_reason

        pixels, sizes, errors, traces = [], [], [], []
        for source, (_, value) in zip(row["sources"], load_batch(list(row["sources"]), self.load), strict=True):
            failed = isinstance(value, BaseException)
            pixels.append(b"" if failed else value.tobytes())
            sizes.append([0, 0] if failed else [value.width, value.height])
            errors.append(failure_reason(source, value) if failed else None)
            traces.append(_trace(value) if failed else None)
        return {
            "indices": list(row["indices"]),
            "jobs": list(row["jobs"]),
            "pixels": pixels,
            "sizes": sizes,
            "errors": errors,
            "traces": traces,
        }


class _Segment(Generic[JobT]):
    """Model actor: holds one model; runs `work.run_batch` on each decoded batch."""

    def __init__(
        self,
        source_of: Callable[[JobT], str],
        make_predict: Callable[[], Predict],
        write: Writer,
        threads: int,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.source_of = source_of
        self.predict = make_predict()
        self.write = write

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        indices = [int(index) for index in row["indices"]]
        jobs = dict(zip(indices, row["jobs"], strict=True))
        loaded: list[tuple[JobT, Image.Image | BaseException]] = []
        failures: dict[int, Outcome[JobT]] = {}
        for index, data, size, error, trace in zip(
            indices, row["pixels"], row["sizes"], row["errors"], row["traces"], strict=True
        ):
            job = jobs[index]
            if error is not None:
                failures[index] = Outcome(job, error=error, trace=trace)
            else:
                loaded.append((job, Image.frombytes("RGB", (int(size[0]), int(size[1])), data)))
        done = run_batch(loaded, self.source_of, self.predict, self.write)
        by_job = {id(outcome.job): outcome for outcome in done}
        records = []
        for index in indices:
            outcome = failures.get(index) or by_job[id(jobs[index])]
            record = {key: value for key, value in asdict(outcome).items() if key != "job"}
            records.append({"index": index, **record})
        return {"outcomes": json.dumps(records)}


def _trace(error: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(error))


def _connect(address: str | None) -> bool:
    """Connect to (or start) Ray unless already connected; quiet logging. Returns True if we connected."""
    import ray
    import ray.data

    # The caller reports progress and errors; Ray Data's own progress lines would drown them.
    with warnings.catch_warnings():  # creating the context trips Ray's own deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_fallback_to_arrow_object_ext_type = True  # the job objects in the rows, stored pickled by Ray
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except Exception as error:  # Ray reports a node that fails to start with a bare Exception
        where = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
        raise RayEngineError(f"cannot start or reach Ray at {where}: {' '.join(str(error).split())}") from None
    return True


def _unwrapped(error: BaseException) -> BaseException:
    """The exception an actor or task raised, out of Ray's wrappers (so a model that cannot load reads as such)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            error = cause
            continue
        break
    return error
