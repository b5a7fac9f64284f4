"""Synthetic videos written with PyAV for the video tests: moving shapes, noise, scene cuts, rotation metadata."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def moving_square_frames(
    count: int, height: int, width: int, *, background: Sequence[int] = (40, 60, 160), noise: float = 0.0,
    speed: int = 2, side: int = 16, seed: int = 0,
) -> list[np.ndarray]:
    """`count` RGB frames: a red square moving right by `speed` pixels per frame over a flat background, plus
    Gaussian noise of standard deviation `noise` (grey levels)."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        frame = np.empty((height, width, 3), np.float32)
        frame[:] = background
        left = (4 + index * speed) % max(1, width - side)
        frame[height // 4 : height // 4 + side, left : left + side] = (230, 30, 30)
        if noise:
            frame += rng.normal(0.0, noise, frame.shape)
        frames.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    return frames


def textured_frames(count: int, height: int, width: int, *, seed: int, noise: float = 4.0) -> list[np.ndarray]:
    """A static bright green-yellow textured scene (another 'shot') with a little noise per frame."""
    rng = np.random.default_rng(seed)
    base = np.zeros((height, width, 3), np.float32)
    base[..., 0] = 150 + 60 * np.sin(np.arange(width) / 5.0)[None, :]
    base[..., 1] = 210
    base[..., 2] = 40 + 30 * np.cos(np.arange(height) / 3.0)[:, None]
    return [np.clip(base + rng.normal(0.0, noise, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def write_video(
    path: Path, frames: Sequence[np.ndarray], *, codec: str = "libx264", rate: Fraction | int = 25,
    pix_fmt: str = "yuv420p", rotation: int | None = None, options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB frames into `path` (container from the suffix)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], Fraction, tuple[int, int]]:
    """Decode with PyAV directly (no clipseg code): frames as arrays in the stream's pixel layout (gray -> 2-D),
    the average frame rate and (width, height)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        frames = []
        for frame in container.decode(stream):
            gray = frame.format.name.startswith("gray")
            frames.append(frame.to_ndarray(format="gray" if gray else "rgb24"))
        return frames, rate, (stream.codec_context.width, stream.codec_context.height)
