"""The run manifest (`--manifest OUT.parquet`): one row per image x prompt, one row per failed image.

Rows found during a run go to small Parquet part files in a hidden folder beside the manifest (each written
atomically), so a killed run keeps what it finished; `ManifestWriter.close` merges the previous manifest, the parts
and the new rows (the newest rows of an image replace its older ones), orders them as the run's plan, writes the
manifest atomically and removes the parts. A resumed run therefore lists every image x prompt exactly once, the
images it skipped included. The manifest may be on any pyarrow file system (`--manifest s3://bucket/run.parquet`):
every file goes through `clipseg.batch.store`, as the masks do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from .store import OutputStore

COLUMNS = (
    "image",
    "prompt",
    "mask",
    "rle",
    "area",
    "mean_probability",
    "width",
    "height",
    "threshold",
    "model",
    "clipseg_version",
    "error",
)
# Rows buffered before a part file is written: bounds both the memory held and the work a kill can lose.
ROWS_PER_PART = 512
SECONDS_PER_PART = 30.0


def schema() -> pa.Schema:
    """Column types of the manifest (`COLUMNS` in order)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.string()),  # the source as given: path or URI
            ("prompt", pa.string()),  # the prompt's name (its text, the image prompt's name, "a or b" with --union)
            ("mask", pa.string()),  # output file relative to -o, "/"-separated
            ("rle", pa.string()),  # COCO RLE counts string (pycocotools) of the binary mask, size = [height, width]
            ("area", pa.int64()),  # mask pixels
            ("mean_probability", pa.float64()),  # mean probability inside the mask, 0 for an empty mask
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("threshold", pa.float64()),
            ("model", pa.string()),
            ("clipseg_version", pa.string()),
            ("error", pa.string()),  # one-line reason of a failed image (its only row), else null
        ]
    )


def success_row(
    image: str, prompt: str, mask: str, annotation: dict[str, Any], width: int, height: int, *, model: str
) -> dict[str, Any]:
    """The row of one image and prompt from its `clipseg.outputs.rle_annotation`."""
    return {
        "image": image,
        "prompt": prompt,
        "mask": mask,
        "rle": annotation["segmentation"]["counts"],
        "area": annotation["area"],
        "mean_probability": annotation["score"],
        "width": width,
        "height": height,
        "threshold": annotation["threshold"],
        "model": model,
        "clipseg_version": _version(),
        "error": None,
    }


def failure_row(image: str, error: str, *, model: str, threshold: float | None = None) -> dict[str, Any]:
    """The one row of an image that could not be segmented."""
    row = dict.fromkeys(COLUMNS)
    row.update(image=image, threshold=threshold, model=model, clipseg_version=_version(), error=error)
    return row


def read_manifest(path: str | os.PathLike) -> pa.Table:
    """A manifest (a path or a pyarrow file-system URI) as a pyarrow Table (pandas: `.to_pandas()`)."""
    from .store import OutputStore

    store, file = OutputStore.open_file(path)
    return _read_table(store, file)


def _read_table(store: OutputStore, path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    with store.open_input(path) as file:
        return pq.read_table(file, schema=schema())


def _write_table(store: OutputStore, path: Path, table: pa.Table) -> None:
    """Write `table` as Parquet at `path`, atomically (`OutputStore.write`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.write(path, sink.getvalue().to_pybytes())


class ManifestWriter:
    """Collects the rows of a run and writes the manifest (see the module docstring).

    Args:
        path: the manifest file: a path or a pyarrow file-system URI (`clipseg.batch.store`); its folder is created.
        prompts: the prompt names of this run: an earlier row counts as finished only for these.
        model: the model's name, for the rows of failed images.
        threshold: the mask threshold, for the rows of failed images.
        resume: keep the rows of earlier runs (the manifest and parts a killed run left); False starts afresh.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        prompts: Sequence[str],
        *,
        model: str,
        threshold: float | None = None,
        resume: bool = True,
    ) -> None:
        from .store import OutputStore

        self.store, self.path = OutputStore.open_file(path)
        self.model = model
        self.threshold = threshold
        self.parts = self.path.with_name(f".{self.path.name}.parts")
        self.prompts = tuple(prompts)
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._sequence = 0
        self.store.make_folder()
        if not resume:
            self.store.delete_folder(self.parts)
        self._finished = self._finished_images() if resume else set()

    def finished(self, image: str) -> bool:
        """True if an earlier run left a successful row for every prompt of `image`."""
        return image in self._finished

    def failure(self, image: str, error: str) -> dict[str, Any]:
        """The row of a failed image in this run."""
        return failure_row(image, error, model=self.model, threshold=self.threshold)

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Record rows (all rows of an image at once: they replace its earlier rows)."""
        self._pending.extend(rows)
        if len(self._pending) >= ROWS_PER_PART or time.monotonic() - self._last_flush > SECONDS_PER_PART:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows to a new part file (atomically)."""
        import pyarrow as pa

        self._last_flush = time.monotonic()
        if not self._pending:
            return
        table = pa.Table.from_pylist(self._pending, schema=schema())
        self._sequence += 1
        # Names sort in writing order: time, then this process's sequence number.
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{self._sequence:06d}.parquet"
        _write_table(self.store, self.parts / name, table)
        self._pending.clear()

    def close(self, images: Sequence[str]) -> pa.Table:
        """Merge everything into the manifest, keeping the rows of `images` (the run's plan, in order) and of this
        run's prompts; write it atomically, remove the parts and return the table."""
        import pyarrow as pa
        import pyarrow.compute as pc

        self.flush()
        merged = self._merged()
        order = pa.table({"image": _strings(images), "_order": pa.array(range(len(images)), pa.int64())})
        prompt_order = pa.table(
            {"prompt": _strings(self.prompts), "_prompt_order": pa.array(range(len(self.prompts)), pa.int64())}
        )
        kept = merged.filter(pc.or_(pc.is_valid(merged["error"]), pc.is_in(merged["prompt"], prompt_order["prompt"])))
        kept = kept.join(order, "image", join_type="inner").join(prompt_order, "prompt", join_type="left outer")
        kept = kept.sort_by([("_order", "ascending"), ("_prompt_order", "ascending")]).select(list(COLUMNS))
        table = kept.cast(schema())
        _write_table(self.store, self.path, table)
        self.store.delete_folder(self.parts)
        return table

    def _tables(self) -> list[pa.Table]:
        """Earlier rows, oldest first: the manifest, then the parts."""
        tables = []
        if self.store.exists(self.path):
            tables.append(_read_table(self.store, self.path))
        parts = [part for part in self.store.files(self.parts) if fnmatch(part.name, "part-*.parquet")]
        tables.extend(_read_table(self.store, part) for part in parts)
        return tables

    def _merged(self) -> pa.Table:
        """All rows, each image's rows from the newest table that has the image."""
        import pyarrow as pa
        import pyarrow.compute as pc

        tables = self._tables()
        if not tables:
            return schema().empty_table()
        newest: dict[str, int] = {}
        for index, table in enumerate(tables):
            newest.update(dict.fromkeys(pc.unique(table["image"]).to_pylist(), index))
        owned: list[list[str]] = [[] for _ in tables]
        for image, index in newest.items():
            owned[index].append(image)
        return pa.concat_tables(
            table.filter(pc.is_in(table["image"], _strings(own))) for table, own in zip(tables, owned, strict=True)
        )

    def _finished_images(self) -> set[str]:
        import pyarrow.compute as pc

        merged = self._merged()
        done = merged.filter(pc.and_(pc.is_null(merged["error"]), pc.is_in(merged["prompt"], _strings(self.prompts))))
        counts = done.group_by("image").aggregate([("prompt", "count_distinct")])
        complete = counts.filter(pc.equal(counts["prompt_count_distinct"], len(set(self.prompts))))
        return set(complete["image"].to_pylist())


def _strings(values: Sequence[str]):  # noqa: ANN202 (pyarrow Array)
    import pyarrow as pa

    return pa.array(list(values), pa.string())


def _version() -> str:
    from .. import __version__

    return __version__
