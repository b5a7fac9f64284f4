"""Video: per-frame masks that hold still over time (`segment_video`), PyAV decoding/encoding, output writers.

    from clipseg.video import segment_video
    for frame in segment_video("clip.mp4", ["a dog"], model=model, smooth=0.8):
        mask = frame.mask(0)        # (H, W) bool, frame.index, frame.time, frame.scene_cut

Needs the `video` extra (PyAV): pip install 'clipseg[video]'. Names are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "segment_video": "clipseg.video.segment",
    "FramePrediction": "clipseg.video.segment",
    "VideoError": "clipseg.video.io",
    "VideoInfo": "clipseg.video.io",
    "VideoReader": "clipseg.video.io",
    "VideoWriter": "clipseg.video.io",
    "probe": "clipseg.video.io",
    "VideoOutputs": "clipseg.video.writers",
}
__all__ = [*_EXPORTS, "FORMATS", "DEFAULT_SMOOTH"]

# Output formats of a video (`clipseg.video.writers`), and the default weight of the past in temporal smoothing
# (benchmarks/bench_video.py). Defined here, free of torch and PyAV, for the command line's choices and defaults.
FORMATS = ("frames", "video", "overlay", "rle")
DEFAULT_SMOOTH = 0.8

if TYPE_CHECKING:
    from .io import VideoError, VideoInfo, VideoReader, VideoWriter, probe
    from .segment import FramePrediction, segment_video
    from .writers import VideoOutputs


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipseg.video' has no attribute {name!r}")
