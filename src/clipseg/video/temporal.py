"""Temporal stability for video: scene-cut detection, motion-aware smoothing of logits, keyframe interpolation.

Smoothing is an exponential moving average of the logits whose weight on the past drops where the picture
changed: per pixel, ``w = strength * exp(-(d / motion_scale)^2)`` with ``d`` the largest change of the three colour
channels of the slightly blurred frame (at the logit grid, values 0..1) since the previous frame. Static regions
are averaged over time, which removes the flicker that sensor noise and compression cause; where an object moves,
the current frame dominates, so masks do not trail behind it (a plain EMA, ``motion_scale=inf``, does;
benchmarks/bench_video.py measures both). Colour rather than brightness, because a shape and its background often
differ in hue more than in gray value. A scene cut resets the average.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter

# Thumbnail side for cut detection: small enough to ignore noise and small motion, large enough for layout.
_CUT_THUMBNAIL = 32
_CUT_BINS = 16
DEFAULT_CUT_THRESHOLD = 0.35
DEFAULT_MOTION_SCALE = 0.05
# Blur (standard deviation, logit-grid pixels) of the frames compared: calms pixel noise, keeps edges local.
_GUIDE_BLUR_SIGMA = 1.0


def _thumbnail(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> float32 (h, w, 3) in [0, 1], box-filtered (every source pixel counts)."""
    small = Image.fromarray(image).resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


class SceneCutDetector:
    """Tells whether a frame starts a new shot.

    The score of a frame is the larger of (a) the total-variation distance between its colour histogram and the
    previous frame's (16 bins per channel, in [0, 1]) and (b) the mean absolute difference of their 32x32
    thumbnails (in [0, 1]); a cut is a score >= `threshold`. Noise and moving objects change both little; a new
    shot changes the layout, the colours or both.
    """

    def __init__(self, threshold: float = DEFAULT_CUT_THRESHOLD) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"cut threshold must lie in (0, 1], got {threshold}")
        self.threshold = threshold
        self._previous: tuple[np.ndarray, np.ndarray] | None = None

    def score(self, image: np.ndarray) -> float:
        """Change score of `image` against the previous frame given (0 for the first); remembers `image`."""
        thumbnail = _thumbnail(image, (_CUT_THUMBNAIL, _CUT_THUMBNAIL))
        histogram = np.stack(
            [np.histogram(thumbnail[..., c], bins=_CUT_BINS, range=(0.0, 1.0))[0] for c in range(3)]
        ).astype(np.float32)
        histogram /= histogram.sum(axis=1, keepdims=True)
        previous, self._previous = self._previous, (thumbnail, histogram)
        if previous is None:
            return 0.0
        histogram_distance = 0.5 * np.abs(histogram - previous[1]).sum(axis=1).mean()
        pixel_distance = np.abs(thumbnail - previous[0]).mean()
        return float(max(histogram_distance, pixel_distance))

    def is_cut(self, image: np.ndarray) -> bool:
        """Whether `image` starts a new shot (never for the first frame)."""
        return self.score(image) >= self.threshold


class LogitSmoother:
    """Motion-aware exponential moving average of logits (see the module docstring).

    Args:
        strength: weight on the past in [0, 1]: 0 is off; 0.5 averages static regions over ~2 frames, 0.8 over
            ~5; 1 keeps static regions as they were first seen (and, with `motion_scale=inf`, everything).
        motion_scale: change of a colour channel (0..1) at which the weight on the past falls to 1/e of
            `strength`; `math.inf` gives a plain EMA.
    """

    def __init__(self, strength: float, *, motion_scale: float = DEFAULT_MOTION_SCALE) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"smoothing strength must lie in [0, 1], got {strength}")
        if motion_scale <= 0:
            raise ValueError(f"motion_scale must be > 0, got {motion_scale}")
        self.strength = strength
        self.motion_scale = motion_scale
        self._state: torch.Tensor | None = None
        self._guide: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the past (at a scene cut)."""
        self._state = None
        self._guide = None

    def __call__(self, logits: torch.Tensor, image: np.ndarray) -> torch.Tensor:
        """Smoothed logits (N, h, w) for this frame; `image` is the (H, W, 3) uint8 frame they belong to."""
        if self.strength == 0.0:
            return logits
        guide = None if math.isinf(self.motion_scale) else _colour_guide(image, logits.shape[-2:])
        if self._state is None or self._state.shape != logits.shape:
            self._state, self._guide = logits.clone(), guide
            return logits
        if guide is None:
            weight: torch.Tensor | float = self.strength
        else:
            change = (guide - self._guide).abs().amax(dim=0)
            weight = (self.strength * torch.exp(-((change / self.motion_scale) ** 2))).to(logits.device)
        self._state = weight * self._state + (1.0 - weight) * logits
        self._guide = guide
        return self._state.clone()


def _colour_guide(image: np.ndarray, size: torch.Size) -> torch.Tensor:
    """(C, h, w) float32 in [0, 1]: the frame box-filtered to the logit grid, then Gaussian-blurred (Pillow)."""
    height, width = int(size[0]), int(size[1])
    small = Image.fromarray(image).resize((width, height), Image.Resampling.BOX)
    blurred = small.filter(ImageFilter.GaussianBlur(_GUIDE_BLUR_SIGMA))
    channels = np.atleast_3d(np.asarray(blurred, dtype=np.float32) / 255.0)  # a gray frame has one channel
    return torch.from_numpy(channels).permute(2, 0, 1)


def interpolate_logits(start: torch.Tensor, end: torch.Tensor, fraction: float) -> torch.Tensor:
    """Linear interpolation between the logits of two keyframes: `fraction` 0 gives `start`, 1 gives `end`."""
    return torch.lerp(start, end, fraction)
