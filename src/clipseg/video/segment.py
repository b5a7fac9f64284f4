"""`segment_video`: per-frame predictions for a video file, temporally smoothed, produced as a stream.

Frames are decoded one by one; keyframes (every frame, or every N-th with `every=N`) go through the model in
batches (the backbone batched over frames), logits of the frames between two keyframes are interpolated linearly,
and the result is smoothed over time (`clipseg.video.temporal`). A scene cut always makes the last frame of the old
shot and the first of the new one keyframes and resets the smoothing, so nothing is carried across a cut. At most
`batch_size x every` frames are held at once: memory does not grow with the video's length.

Tiled inference (`tiles`) runs on the keyframes, like the model; the fused logits of every frame share one working
resolution, so interpolation and smoothing work on them unchanged. Edge-aware refinement (`refine`) comes before
the smoothing: each frame's probabilities (interpolated ones included, negatives applied) are refined with that
frame as guide, and their logits, at the frame's size, are smoothed over time. Refining the smoothed maps instead
lost more accuracy on moving shapes for the same flicker (benchmarks/bench_video_refine.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from ..model.clipseg import CLIPSeg
from ..predictor import BACKBONE_CHUNK, Prediction, Predictor, Templates
from ..prompts import Prompt, prompt_list, prompt_name
from ..tiling import TileOptions, TilesInput
from . import DEFAULT_SMOOTH
from .io import DecodedFrame, VideoReader
from .temporal import (
    DEFAULT_CUT_THRESHOLD,
    DEFAULT_MOTION_SCALE,
    LogitSmoother,
    SceneCutDetector,
    interpolate_logits,
)

# Refined probabilities are smoothed as logits of maps clamped to [REFINED_CLAMP, 1 - REFINED_CLAMP] (+-9.2).
REFINED_CLAMP = 1e-4


@dataclass
class FramePrediction(Prediction):
    """A `Prediction` for one video frame, with where it sits in the video.

    Attributes (besides `Prediction`'s):
        index: frame number from 0.
        time: presentation time in seconds.
        pts, time_base: the source's timestamp (pts x time_base = time), for writers that keep the timing.
        image: the frame, (H, W, 3) uint8 RGB, upright.
        scene_cut: the frame starts a new shot (smoothing was reset).
        keyframe: the model ran on this frame; otherwise its logits are interpolated (`every` > 1).

    With refinement (`segment_video(..., refine=...)`), `logits` are those of the refined and smoothed maps at the
    frame's size and `negative_logits` is empty: the negatives were applied before refinement.
    """

    index: int = 0
    time: float = 0.0
    pts: int | None = None
    time_base: Fraction = Fraction(1)
    image: np.ndarray | None = None
    scene_cut: bool = False
    keyframe: bool = True


@dataclass
class _Pending:
    frame: DecodedFrame
    cut: bool
    key: bool
    logits: torch.Tensor | None = None  # positives and negatives stacked, once known


def segment_video(
    source: str | os.PathLike,
    prompts: Prompt | Sequence[Prompt],
    *,
    model: Predictor | CLIPSeg | str = "CIDAS/clipseg-rd64-refined",
    negative: Prompt | Sequence[Prompt] | None = None,
    templates: Templates = "plain",
    ensemble: bool = False,
    seed: int = 0,
    smooth: float = DEFAULT_SMOOTH,
    every: int = 1,
    batch_size: int = BACKBONE_CHUNK,
    cut_threshold: float = DEFAULT_CUT_THRESHOLD,
    motion_scale: float = DEFAULT_MOTION_SCALE,
    tiles: TilesInput = None,
    refine: str | None = None,
    refine_options: Mapping[str, Any] | None = None,
) -> Iterator[FramePrediction]:
    """Segment every frame of a video file; yields one `FramePrediction` per frame, in order.

    Args:
        source: a video file PyAV can read (any container and codec its FFmpeg has).
        prompts, negative, templates, ensemble, seed: as `Predictor.predict`.
        model: a `Predictor`, a model (e.g. from `clipseg.load_model`) or a name for `clipseg.load_model`.
        smooth: weight of the past in the temporal smoothing, 0 (off) to 1 (see `clipseg.video.temporal`).
        every: run the model on every N-th frame and interpolate the logits in between (scene cuts add keyframes).
        batch_size: keyframes per model call.
        cut_threshold: scene-cut score (0..1) from which a frame starts a new shot.
        motion_scale: colour change (0..1) at which smoothing lets go; `math.inf` gives a plain moving average.
        tiles: tiled inference on the keyframes, as `Predictor.predict`'s `tiles` (True, a scale, scales or a
            `clipseg.tiling.TileOptions`).
        refine: edge-aware refinement of each frame's probabilities with the frame as guide, before smoothing
            ("guided", see `clipseg.refine.refine`); None: off.
        refine_options: options of the refine method (`clipseg.refine.refine`), e.g. {"radius": 8}; give
            {"center": t} when masks are cut at threshold t (default: pivot on 0.4, as `Prediction.refined`).

    The file is opened, and the arguments checked, when this is called; frames are decoded as they are consumed.

    Raises:
        ValueError: bad arguments (tile options, refine method or options among them), no prompts.
        clipseg.refine.MissingExtraError: `refine` needs OpenCV (the ``refine`` extra), which is not installed.
        clipseg.video.VideoError: not a video (on the call) or damaged/truncated (while iterating, after the frames
            that could be decoded).
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    positive, negatives = prompt_list(prompts), prompt_list(negative)
    if not positive:
        raise ValueError("segment_video needs at least one prompt")
    tile_options = TileOptions.parse(tiles)
    refinement = _refinement(refine, refine_options)
    smoother = LogitSmoother(smooth, motion_scale=motion_scale)
    detector = SceneCutDetector(cut_threshold)
    predictor = _predictor(model)
    reader = VideoReader(source)

    def run(items: list[_Pending]) -> None:
        images = [item.frame.image for item in items]
        predictions = predictor.predict_batch(
            images, positive, negative=negatives, templates=templates, ensemble=ensemble, seed=seed,
            tiles=tile_options,
        )
        for item, prediction in zip(items, predictions, strict=True):
            item.logits = torch.cat([prediction.logits, prediction.negative_logits])

    def frames() -> Iterator[FramePrediction]:
        names = tuple(prompt_name(p) for p in positive)
        size = (reader.info.height, reader.info.width)
        queue: list[_Pending] = []
        previous_key: _Pending | None = None

        def emit(upto: int) -> Iterator[FramePrediction]:
            """Yield the queue's frames up to position `upto` (a keyframe with logits) and drop them."""
            nonlocal previous_key
            following: list[_Pending] = []
            upcoming = queue[upto]
            for item in reversed(queue[: upto + 1]):
                upcoming = item if item.logits is not None else upcoming
                following.append(upcoming)
            for item, next_key in zip(queue[: upto + 1], reversed(following), strict=True):
                if item.logits is None:
                    span = next_key.frame.index - previous_key.frame.index
                    fraction = (item.frame.index - previous_key.frame.index) / span
                    logits = interpolate_logits(previous_key.logits, next_key.logits, fraction)
                else:
                    logits, previous_key = item.logits, item
                if item.cut:
                    smoother.reset()
                frame = item.frame
                if refinement is not None:  # positives only from here on: the negatives are applied
                    plain = Prediction(names, logits[: len(positive)], logits[len(positive) :], size)
                    logits = _refined_logits(plain, frame.image, *refinement)
                logits = smoother(logits, frame.image)
                yield FramePrediction(
                    names, logits[: len(positive)], logits[len(positive) :], size, index=frame.index, time=frame.time,
                    pts=frame.pts, time_base=frame.time_base, image=frame.image, scene_cut=item.cut,
                    keyframe=item.key,
                )
            del queue[: upto + 1]

        def flush(final: bool) -> Iterator[FramePrediction]:
            waiting = [item for item in queue if item.key and item.logits is None]
            if waiting and (final or len(waiting) >= batch_size):
                run(waiting)
            known = [position for position, item in enumerate(queue) if item.logits is not None]
            if known:
                yield from emit(known[-1])

        try:
            for frame, cut, key in _flagged(reader, detector, every):
                queue.append(_Pending(frame, cut, key))
                if key:
                    yield from flush(final=False)
            yield from flush(final=True)
        finally:
            reader.close()

    return frames()


def _flagged(reader: VideoReader, detector: SceneCutDetector, every: int) -> Iterator[tuple[DecodedFrame, bool, bool]]:
    """(frame, starts a shot, is a keyframe) for each frame, one frame behind the decoder: a frame is a keyframe
    if it is the first or last, starts or ends a shot, or lies `every` frames after the previous keyframe."""
    previous: DecodedFrame | None = None
    previous_cut = False
    last_key = 0
    for frame in reader:
        cut = detector.is_cut(frame.image) and frame.index > 0
        if previous is not None:
            key = previous.index == 0 or previous_cut or cut or previous.index - last_key >= every
            if key:
                last_key = previous.index
            yield previous, previous_cut, key
        previous, previous_cut = frame, cut
    if previous is not None:
        yield previous, previous_cut, True


def _refined_logits(prediction: Prediction, image: np.ndarray, method: str, options: dict[str, Any]) -> torch.Tensor:
    """(P, H, W) logits of the prediction's probabilities (negatives applied) refined with `image` as guide, at the
    frame's size; clamped, as the refinement takes maps to exactly 0 and 1."""
    probabilities = prediction.refined(image, method, **options).probabilities
    return torch.logit(probabilities.clamp(REFINED_CLAMP, 1.0 - REFINED_CLAMP))


def _refinement(method: str | None, options: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """(method, options) for `Prediction.refined`, checked now (not at the first frame), or None without `method`."""
    if method is None:
        if options:
            raise ValueError("refine_options need a refine method, e.g. refine='guided'")
        return None
    from ..refine import check_refine_options, require_extra

    settings = dict(options or {})
    check_refine_options(method, settings)
    require_extra(refine=True)
    return method, settings


def _predictor(model: Predictor | CLIPSeg | str) -> Predictor:
    if isinstance(model, Predictor):
        return model
    if isinstance(model, str):
        from ..checkpoints.load import load_model

        return Predictor(load_model(model))
    return Predictor(model)
