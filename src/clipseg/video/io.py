"""Video decoding and encoding with PyAV (its wheels bundle FFmpeg; no system FFmpeg is needed).

Frames come out upright: the display matrix a phone writes (``VideoFrame.rotation``, counter-clockwise degrees,
and a mirror when its determinant is negative) is applied, so sizes are display sizes. Timestamps are kept, so a
mask video has the source's frame count, size and frame rate (variable frame rates included).

Damage is reported as `VideoError` (a ValueError) naming the file: a file FFmpeg cannot open, one without a video
stream, a still image, a decoding error, or fewer decoded frames than the container promises (a truncated file).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

# Suffixes `clipseg video` picks up when it walks a folder (explicitly named files are tried whatever their suffix).
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
     ".3gp", ".ogv", ".gif", ".mxf", ".y4m"}
)
# Demuxers of still images: such a file opens as a one-frame "video", but it is an image.
_IMAGE_DEMUXERS = ("image2", "_pipe")
# A container's frame count or duration may be off by a frame or two (edit lists, rounding); fewer decoded frames
# than this margin below it means the file ends early.
_TRUNCATION_MARGIN_FRAMES = 2
_TRUNCATION_MARGIN_FRACTION = 0.02
MASK_CODEC = "ffv1"  # lossless, 8-bit gray, any frame size
MASK_SUFFIX = ".mkv"
OVERLAY_CODEC = "libx264"
OVERLAY_SUFFIX = ".mp4"
OVERLAY_CRF = "18"  # visually lossless


class VideoError(ValueError):
    """A file that is not a readable video (corrupt, truncated, an image, no video stream)."""


def require_av() -> Any:
    """The `av` module, or an ImportError naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise ImportError("video support needs PyAV: pip install 'clipseg[video]'") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video's first video stream.

    Attributes:
        width, height: display size in pixels (after rotation).
        frame_rate: average frames per second (exact fraction, e.g. 30000/1001).
        frame_count: frames the container promises, None when it does not say (estimated from the duration then).
        duration: seconds, None if unknown.
        rotation: counter-clockwise degrees the frames are turned by for display (0, 90, 180, -90).
        codec: decoder name, e.g. "h264".
    """

    path: Path
    width: int
    height: int
    frame_rate: Fraction
    frame_count: int | None
    duration: float | None
    rotation: int
    codec: str

    @property
    def expected_frames(self) -> int | None:
        """The container's frame count, or duration x frame rate rounded, or None."""
        if self.frame_count:
            return self.frame_count
        if self.duration:
            return round(self.duration * self.frame_rate)
        return None


@dataclass
class DecodedFrame:
    """One frame, upright: `image` is (H, W, 3) uint8 RGB; `pts` in the stream's `time_base`."""

    index: int
    pts: int | None
    time_base: Fraction
    time: float
    image: np.ndarray


class VideoReader:
    """Decode a video file frame by frame (use as a context manager or call `close`).

    Raises:
        VideoError: the file is not a video or cannot be opened (on construction), or is damaged or truncated
            (while iterating, after the frames that could be decoded).
        FileNotFoundError: no such file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        av = require_av()
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise VideoError(f"{self.path}: is a folder, not a video file")
        try:
            self._container = av.open(str(self.path), mode="r")
        except av.FFmpegError as error:
            raise VideoError(f"{self.path}: not a readable video (corrupt, truncated or another kind of file): "
                             f"{_reason(error)}") from None
        try:
            self.info = self._probe()
        except BaseException:
            self._container.close()
            raise

    def _probe(self) -> VideoInfo:
        av = require_av()
        container = self._container
        if any(marker in container.format.name for marker in _IMAGE_DEMUXERS):
            raise VideoError(f"{self.path}: is a still image ({container.format.name}), not a video")
        if not container.streams.video:
            raise VideoError(f"{self.path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoError(f"{self.path}: the video stream has no frame rate")
        self._time_base = stream.time_base or Fraction(1, int(rate))
        self._frame_rate = Fraction(rate)
        self._decoded = container.decode(stream)
        # The display matrix arrives with the frames: read it from the first one (kept for iteration).
        try:
            self._first = next(self._decoded, None)
        except av.FFmpegError as error:
            raise VideoError(f"{self.path}: corrupt video: the first frame cannot be decoded: {_reason(error)}") from None
        if self._first is None:
            raise VideoError(f"{self.path}: corrupt or truncated video: no frame could be decoded")
        self._transform = _display_transform(_display_matrix(self._first))
        width, height = self._first.width, self._first.height
        if self._transform[0] % 2:
            width, height = height, width
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        return VideoInfo(
            path=self.path,
            width=width,
            height=height,
            frame_rate=self._frame_rate,
            frame_count=stream.frames or None,
            duration=duration,
            rotation=self._first.rotation,
            codec=stream.codec_context.name,
        )

    def __iter__(self) -> Iterator[DecodedFrame]:
        """Yield every frame in presentation order; call once."""
        av = require_av()
        if self._first is None:
            raise RuntimeError("a VideoReader is iterated once")
        frame, self._first = self._first, None
        index = 0
        try:
            while frame is not None:
                if frame.is_corrupt:
                    warnings.warn(f"{self.path}: frame {index} is damaged (decoded with errors)", stacklevel=2)
                image = _upright(frame.to_ndarray(format="rgb24"), self._transform)
                if image.shape[:2] != (self.info.height, self.info.width):
                    raise VideoError(f"{self.path}: frame {index} is {image.shape[1]}x{image.shape[0]}, the video "
                                     f"{self.info.width}x{self.info.height} (frame size changes are not supported)")
                pts = frame.pts
                time = float(pts * self._time_base) if pts is not None else index / float(self._frame_rate)
                yield DecodedFrame(index, pts, self._time_base, time, image)
                index += 1
                frame = next(self._decoded, None)
        except av.FFmpegError as error:
            raise VideoError(f"{self.path}: corrupt video: decoding failed after {index} frames: "
                             f"{_reason(error)}") from None
        expected = self.info.expected_frames
        if expected is not None:
            margin = max(_TRUNCATION_MARGIN_FRAMES, round(_TRUNCATION_MARGIN_FRACTION * expected))
            if index < expected - margin:
                raise VideoError(f"{self.path}: truncated or corrupt video: decoded {index} of the "
                                 f"{expected} frames its container announces")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open `path`, read its `VideoInfo` and close it (raises as `VideoReader`)."""
    with VideoReader(path) as reader:
        return reader.info


class VideoWriter:
    """Encode frames into a video file at `path` (its suffix picks the container).

    kind "mask": 8-bit gray frames, lossless FFV1 (use a ".mkv" path); kind "overlay": RGB frames, H.264 at CRF 18
    (4:2:0 when both sides are even, 4:4:4 otherwise, so odd sizes are kept). Timestamps count periods of
    `frame_rate` from the first frame's source time, so a constant-rate source keeps its exact rate and a variable-
    rate one its timing to the nearest period (stamps are kept strictly increasing, as encoders need).
    """

    def __init__(self, path: str | os.PathLike, *, kind: str, width: int, height: int, frame_rate: Fraction) -> None:
        av = require_av()
        if kind not in ("mask", "overlay"):
            raise ValueError(f"kind must be 'mask' or 'overlay', got {kind!r}")
        self.kind = kind
        self._container = av.open(str(path), mode="w")
        try:
            if kind == "mask":
                stream = self._container.add_stream(MASK_CODEC, rate=frame_rate)
                stream.pix_fmt = "gray"
            else:
                if OVERLAY_CODEC not in av.codecs_available:
                    raise RuntimeError(f"this PyAV build has no {OVERLAY_CODEC} encoder for overlay videos")
                stream = self._container.add_stream(OVERLAY_CODEC, rate=frame_rate, options={"crf": OVERLAY_CRF})
                stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            stream.width, stream.height = width, height
            self._stream = stream
        except BaseException:
            self._container.close()
            raise
        self._time_base = 1 / Fraction(frame_rate)
        self._first: int | None = None
        self._last = -1
        self.frames = 0

    def write(self, array: np.ndarray, pts: int | None, time_base: Fraction) -> None:
        """Append one frame: (H, W) uint8 for masks, (H, W, 3) uint8 RGB for overlays; `pts` x `time_base` is its
        source time (None: right after the previous frame)."""
        av = require_av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="gray" if self.kind == "mask" else "rgb24")
        # Stamps count frame periods, so a constant-rate source gives 0, 1, 2, ... and its exact frame rate.
        stamp = self._last + 1 if pts is None else round(pts * time_base / self._time_base)
        if self._first is None:
            self._first = stamp
        stamp = max(stamp - self._first, self._last + 1)
        frame.pts, frame.time_base = stamp, self._time_base
        self._last = stamp
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()

    def abandon(self) -> None:
        """Close without flushing (the file is to be deleted)."""
        self._container.close()


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(str(text).split())


def _display_matrix(frame: Any) -> np.ndarray | None:
    """FFmpeg's display matrix of a decoded frame (9 numbers, row-major, 16.16 fixed point), or None."""
    for data in frame.side_data:
        if "DISPLAYMATRIX" in str(data.type).upper():
            raw = bytes(data)
            return np.frombuffer(raw[:36], dtype="<i4").astype(np.float64) if len(raw) >= 36 else None
    return None


def _display_transform(matrix: np.ndarray | None) -> tuple[int, bool]:
    """(counter-clockwise quarter turns, flip upside down afterwards) that show a frame as its display matrix
    says, following FFmpeg's own autorotation (fftools: transpose / hflip / vflip by the matrix's angle and signs)."""
    if matrix is None:
        return 0, False
    # av_display_rotation_get gives the counter-clockwise angle; FFmpeg's get_rotation negates it.
    scale_x, scale_y = np.hypot(matrix[0], matrix[3]), np.hypot(matrix[1], matrix[4])
    if not scale_x or not scale_y:
        return 0, False
    counter_clockwise = -np.degrees(np.arctan2(matrix[1] / scale_y, matrix[0] / scale_x))
    theta = round(-counter_clockwise / 90.0) % 4 * 90
    if theta == 90:  # "clock", or "cclock_flip" when mirrored
        return (1, True) if matrix[3] > 0 else (3, False)
    if theta == 270:  # "cclock", or "clock_flip" when mirrored
        return (3, True) if matrix[3] < 0 else (1, False)
    if theta == 180:  # hflip if matrix[0] < 0, vflip if matrix[4] < 0; both = a half turn
        horizontal, vertical = matrix[0] < 0, matrix[4] < 0
        if horizontal and vertical:
            return 2, False
        return (2, True) if horizontal else (0, vertical)
    return 0, bool(matrix[4] < 0)


def _upright(image: np.ndarray, transform: tuple[int, bool]) -> np.ndarray:
    turns, flip = transform
    if turns:
        image = np.rot90(image, k=turns)
    if flip:
        image = image[::-1]
    return np.ascontiguousarray(image) if turns or flip else image
