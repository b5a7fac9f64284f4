"""Segment image collections, on this machine or on a Ray cluster, with `clipseg segment`'s exact outputs.

    import clipseg.batch
    table = clipseg.batch.segment_dataset(["photos/", "s3://bucket/a.jpg"], ["a cup"], "masks/", engine="ray")
    table.to_pandas()          # one row per image x prompt: mask file, COCO RLE, area, ...

Modules: `manifest` (the Parquet manifest), `sources` (paths, URIs, --manifest-in lists), `work` (one batch, the
unit both engines run), `engines` and `ray_engine` (where batches run).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_MANIFEST_NAME = "manifest.parquet"


def segment_dataset(
    sources: Sequence[str | os.PathLike],
    prompts: Sequence[str],
    output: str | os.PathLike,
    *,
    engine: str = "ray",
    manifest: str | os.PathLike | None = None,
    model: str | None = None,
    formats: Sequence[str] = ("mask",),
    threshold: float = 0.4,
    batch_size: int = 4,
    workers: int | None = None,
    ray_address: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> pa.Table:
    """Run `clipseg segment` over `sources` (image files, folders, or URIs such as s3://bucket/img.jpg) and
    return its manifest; failed images are rows with an `error`, not exceptions.

    Args:
        sources: what to segment; URIs are read with pyarrow's file systems.
        prompts: text prompts.
        output: output folder, a path or a pyarrow file-system URI such as s3://bucket/masks (the masks; the
            manifest too unless `manifest` says otherwise).
        engine: "ray" (joins the running Ray session, `ray_address`, or starts a local cluster) or "local".
        manifest: where to write the manifest, a path or URI (default: OUTPUT/manifest.parquet).
        model: hub id or checkpoint folder (default: the CLI's).
        formats: output kinds: mask, soft, heatmap, overlay, cutout, rle.
        threshold, batch_size, workers, ray_address, device, overwrite: as the CLI options of the same names.

    Raises:
        RuntimeError: the run could not start (bad option, model not found, Ray unreachable); the reason was
            printed as one line on stderr.
    """
    import typer

    from ..cli.common import DEFAULT_MODEL
    from ..cli.options import Engine, OutputFormat
    from ..cli.segment import segment
    from .manifest import read_manifest
    from .sources import is_uri
    from .store import OutputStore, joined

    manifest_path = os.fspath(manifest) if manifest is not None else joined(os.fspath(output), DEFAULT_MANIFEST_NAME)
    files = [Path(source) for source in map(str, sources) if not is_uri(source)]
    uris = [source for source in map(str, sources) if is_uri(source)]
    with tempfile.TemporaryDirectory(prefix="clipseg-sources-") as folder:
        listing = None
        if uris:
            import pyarrow as pa
            import pyarrow.csv as pa_csv

            listing = Path(folder) / "sources.csv"
            pa_csv.write_csv(pa.table({"path": uris}), listing)
        try:
            segment(
                output=os.fspath(output),
                inputs=files,
                prompt=list(prompts),
                output_format=[OutputFormat(fmt) for fmt in formats],
                threshold=threshold,
                model=model or DEFAULT_MODEL,
                device=device,
                batch_size=batch_size,
                overwrite=overwrite,
                manifest_in=None if listing is None else str(listing),
                manifest=manifest_path,
                engine=Engine(engine),
                ray_address=ray_address,
                workers=workers,
            )
        except typer.Exit as error:
            store, file = OutputStore.open_file(manifest_path)
            if error.exit_code != 1 or not store.exists(file):  # 1: some images failed, listed in the manifest
                raise RuntimeError(f"clipseg segment stopped (exit status {error.exit_code}): see stderr") from None
    return read_manifest(manifest_path)


__all__ = ["segment_dataset"]
