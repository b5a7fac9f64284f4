"""Choose the engine: the same batches, loader, model and writer run in this process or on Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from .work import JobT, Outcome, Predict, Writer, load_batch, run_batch

if TYPE_CHECKING:
    from PIL import Image

ENGINES = ("local", "ray")


def run_batches(
    batches: Sequence[Sequence[JobT]],
    *,
    engine: str,
    source_of: Callable[[JobT], str],
    load: Callable[[str], Image.Image],
    make_predict: Callable[[], Predict],
    write: Writer,
    ray_address: str | None = None,
    workers: int | None = None,
) -> Iterator[Outcome[JobT]]:
    """Each image's outcome as it finishes. "local" runs the batches in order in this process (the model is built
    before the first batch); "ray" runs them on a Ray cluster (`ray_engine.run_on_ray`), in no fixed order."""
    if engine == "ray":
        from .ray_engine import run_on_ray

        yield from run_on_ray(
            batches,
            source_of=source_of,
            load=load,
            make_predict=make_predict,
            write=write,
            address=ray_address,
            workers=workers,
        )
        return
    if engine != "local":
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if not any(batches):
        return
    predict = make_predict()
    for batch in batches:
        yield from run_batch(load_batch(batch, lambda job: load(source_of(job))), source_of, predict, write)
