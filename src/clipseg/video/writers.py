"""Output files of a segmented video, written as a stream and published atomically when the video is done.

Layout below the video's folder (`OUTPUT/<video stem>/`), with one slug per prompt (`clipseg.outputs.unique_names`,
never containing a dot, so no slug collides with the fixed names):

- frames:  ``<prompt>/000000.png`` ... — one binary (or, feathered, soft) mask PNG per frame;
- video:   ``<prompt>.mkv`` — the masks as a lossless 8-bit gray FFV1 video (same frame count, size, rate);
- overlay: ``overlay.mp4`` — the frames with every prompt's mask tinted in its colour (H.264);
- rle:     ``rle.jsonl`` — one JSON object per frame: frame, time, size and per prompt a COCO RLE annotation.

Every output is written under a temporary name beside its final one (`clipseg.fileio`) and renamed only once the
last frame is in, so an interrupted or failed video leaves nothing under a final name; outputs that already exist
are not written again unless `overwrite`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np
from PIL import Image

from ..fileio import atomic_directory, atomic_path, atomic_write
from ..outputs import label_colours, mask_image, mask_overlay, rle_annotation
from ..postprocess import MaskOptions
from . import FORMATS
from .io import MASK_SUFFIX, OVERLAY_SUFFIX, VideoInfo, VideoWriter
from .segment import FramePrediction

OVERLAY_NAME = "overlay" + OVERLAY_SUFFIX
RLE_NAME = "rle.jsonl"
FRAME_NAME = "{:06d}.png"
# Masks are two-valued: a fast PNG compression level costs little size.
PNG_COMPRESS_LEVEL = 1


def output_paths(folder: Path, slugs: Sequence[str], formats: Sequence[str]) -> dict[tuple[str, int | None], Path]:
    """The final path of every output: (format, prompt index, or None for one file per video) -> path."""
    paths: dict[tuple[str, int | None], Path] = {}
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown video output format {fmt!r}; choose from {', '.join(FORMATS)}")
        if fmt == "frames":
            paths.update({(fmt, index): folder / slug for index, slug in enumerate(slugs)})
        elif fmt == "video":
            paths.update({(fmt, index): folder / f"{slug}{MASK_SUFFIX}" for index, slug in enumerate(slugs)})
        elif fmt == "overlay":
            paths[(fmt, None)] = folder / OVERLAY_NAME
        else:
            paths[(fmt, None)] = folder / RLE_NAME
    return paths


class VideoOutputs:
    """Write the outputs of one video frame by frame (a context manager: published on success, discarded on error).

    Args:
        paths: from `output_paths`; outputs that exist are skipped unless `overwrite`.
        names: one label per entry (a prompt, or the union), in the RLE records.
        info: the source video (size and frame rate of the videos written).
        options: threshold and mask clean-up, as for images.
        union: one entry for the union of all prompts instead of one per prompt.
        source: how the RLE records name the video.
    """

    def __init__(
        self,
        paths: dict[tuple[str, int | None], Path],
        names: Sequence[str],
        info: VideoInfo,
        *,
        options: MaskOptions | None = None,
        union: bool = False,
        overwrite: bool = False,
        source: str = "",
    ) -> None:
        self.todo = {key: path for key, path in paths.items() if overwrite or not path.exists()}
        self.names = list(names)
        self.info = info
        self.options = options or MaskOptions()
        self.union = union
        self.source = source or str(info.path)
        self.files_written = 0
        self._stack = contextlib.ExitStack()
        self._frame_folders: dict[int, Path] = {}
        self._videos: dict[int, VideoWriter] = {}
        self._overlay: VideoWriter | None = None
        self._rle: IO[str] | None = None

    def __enter__(self) -> VideoOutputs:
        stack = self._stack.__enter__()
        try:
            info = self.info
            for (fmt, index), path in self.todo.items():
                if fmt == "frames":
                    self._frame_folders[index] = stack.enter_context(atomic_directory(path))
                elif fmt == "rle":
                    self._rle = stack.enter_context(atomic_write(path, "w"))
                else:
                    temporary = stack.enter_context(atomic_path(path))
                    kind = "mask" if fmt == "video" else "overlay"
                    writer = VideoWriter(
                        temporary, kind=kind, width=info.width, height=info.height, frame_rate=info.frame_rate
                    )
                    stack.push(_finish_or_abandon(writer))
                    if fmt == "video":
                        self._videos[index] = writer
                    else:
                        self._overlay = writer
        except BaseException as error:
            self._stack.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._stack.__exit__(kind, error, trace)
        if error is None:
            self.files_written = len(self.todo)
            return
        for folder in {path.parent for path in self.todo.values()}:
            with contextlib.suppress(OSError):
                folder.rmdir()  # the video's folder, if this run created it and left nothing in it

    def write(self, prediction: FramePrediction) -> None:
        """Add one frame's masks to every output."""
        if not self.todo:
            return
        options = self.options
        overlay = Image.fromarray(prediction.image) if self._overlay is not None else None
        colours = label_colours(len(self.names))
        annotations = []
        for index, name in enumerate(self.names):
            probabilities = (prediction.union_probability() if self.union else prediction.probability(index)).numpy()
            binary = options.binary(probabilities)
            alpha = options.apply(probabilities) if options.feather > 0 else binary
            if self._rle is not None:
                annotations.append(rle_annotation(binary, probabilities, prompt=name, threshold=options.threshold))
            if index in self._frame_folders or index in self._videos:
                mask = mask_image(alpha)
                if index in self._frame_folders:
                    folder = self._frame_folders[index]
                    mask.save(folder / FRAME_NAME.format(prediction.index), format="PNG",
                              compress_level=PNG_COMPRESS_LEVEL)
                if index in self._videos:
                    self._videos[index].write(np.asarray(mask), prediction.pts, prediction.time_base)
            if overlay is not None:
                overlay = mask_overlay(overlay, alpha, colour=colours[index + 1])
        if overlay is not None:
            self._overlay.write(np.asarray(overlay), prediction.pts, prediction.time_base)
        if self._rle is not None:
            record = {
                "video": self.source,
                "frame": prediction.index,
                "time": round(prediction.time, 6),
                "height": self.info.height,
                "width": self.info.width,
                "annotations": annotations,
            }
            self._rle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _finish_or_abandon(writer: VideoWriter):
    """An ExitStack exit callback: flush and close the encoder on success, just close it on error."""

    def exit_(kind: type | None, error: BaseException | None, trace: TracebackType | None) -> bool:
        if error is None:
            writer.close()
        else:
            writer.abandon()
        return False

    return exit_
