"""Tiled inference geometry: overlapping square windows at one or more scales, smooth blend weights, and the
fusion of tile predictions with the global prediction.

The decoder sees a 22x22 token grid, so a photo gets a mask upsampled far beyond what the model resolved. Tiles
let the model look at parts of the photo at a higher resolution; the global pass still decides *what* is in
the photo:

- Scale ``s`` covers the longer image side with ``s`` square windows overlapping by `overlap` of their side (the
  shorter side with as many as it needs). A window is never smaller than the model input (no upsampling beyond
  the photo's own pixels) nor larger than the shorter image side; a scale whose window would cover the whole image
  is the global pass again and is skipped; an image that fits the model input (352x352) needs no tiles and
  gives exactly the global result.
- Within a scale, windows are blended with weights that fall smoothly to zero across the overlap (but not at the
  image border) and are normalised to sum to one at every pixel.
- Scales and the global pass are averaged (the global pass with weight `global_weight`), then **gated**: a pixel's
  probability may not exceed the global probability's maximum within `gate_margin` global tokens. A tile may
  sharpen an object the global pass sees, never invent one it does not.

Fusion runs at a working resolution where the finest window keeps the model's output resolution (never more than
the image's); the caller upsamples to the image size as for a global prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# 2x2 windows plus the global pass at equal weight: the cheapest grid that doubles the resolution (about 3x the
# global cost). Measured (benchmarks/bench_tiles.py): most of the gain of finer grids on small objects, and the
# smallest loss where objects already fill the global view.
DEFAULT_SCALES: tuple[int, ...] = (2,)
DEFAULT_OVERLAP = 0.25
DEFAULT_GLOBAL_WEIGHT = 0.5
DEFAULT_GATE_MARGIN = 1.0
# Probabilities are turned back into logits through this clamp (sigmoid(±13.8) = 1e-6 from 0 or 1).
_PROBABILITY_EPS = 1e-6


@dataclass(frozen=True)
class TileOptions:
    """How `Predictor.predict(..., tiles=...)` tiles an image.

    Attributes:
        scales: window counts along the longer image side, one entry per scale (e.g. ``(2, 4)``), each >= 2.
        overlap: fraction of a window's side shared with its neighbour, in [0, 0.9].
        global_weight: weight of the global pass against the (equally weighted) scales, in [0, 1).
        gate_margin: the gate's reach, in global tokens (image side / token-grid side), >= 0.
    """

    scales: tuple[int, ...] = DEFAULT_SCALES
    overlap: float = DEFAULT_OVERLAP
    global_weight: float = DEFAULT_GLOBAL_WEIGHT
    gate_margin: float = DEFAULT_GATE_MARGIN

    def __post_init__(self) -> None:
        scales = tuple(self.scales)
        if not scales:
            raise ValueError("tiles need at least one scale, e.g. 2 (a 2x2 grid)")
        for scale in scales:
            if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
                raise ValueError(f"a tile scale is a whole number of windows >= 2, got {scale!r}")
        object.__setattr__(self, "scales", tuple(sorted({int(scale) for scale in scales})))
        if not 0.0 <= self.overlap <= 0.9:
            raise ValueError(f"tile overlap must lie in [0, 0.9], got {self.overlap}")
        if not 0.0 <= self.global_weight < 1.0:
            raise ValueError(f"tile global_weight must lie in [0, 1), got {self.global_weight}")
        if self.gate_margin < 0:
            raise ValueError(f"tile gate_margin must be >= 0 global tokens, got {self.gate_margin}")

    @classmethod
    def parse(cls, tiles: TilesInput) -> TileOptions | None:
        """None/False -> None (no tiling); True -> defaults; an int or ints -> those scales; a TileOptions as is."""
        if tiles is None or tiles is False:
            return None
        if tiles is True:
            return cls()
        if isinstance(tiles, TileOptions):
            return tiles
        if isinstance(tiles, (int, np.integer)):
            return cls(scales=(tiles,))
        if isinstance(tiles, Sequence) and not isinstance(tiles, str):
            return cls(scales=tuple(tiles))
        raise TypeError(f"tiles must be True, a scale (int), a list of scales or TileOptions, got {tiles!r}")


TilesInput = bool | int | Sequence[int] | TileOptions | None


@dataclass(frozen=True)
class Tile:
    """A square window of the image: rows top..top+size, columns left..left+size (original pixels)."""

    top: int
    left: int
    size: int
    scale: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), the PIL crop box."""
        return (self.left, self.top, self.left + self.size, self.top + self.size)


def window_side(height: int, width: int, scale: int, overlap: float, tile_size: int) -> int:
    """Side of scale `scale`'s windows: `scale` windows overlapping by `overlap` span the longer side, clamped to
    [tile_size, shorter side]."""
    side = math.ceil(max(height, width) / (scale - (scale - 1) * overlap))
    return min(max(side, tile_size), min(height, width))


def axis_starts(length: int, side: int, overlap: float) -> list[int]:
    """Evenly spaced window starts covering [0, length) with windows of `side` overlapping by at least
    `overlap` * side (the first starts at 0, the last ends at `length`)."""
    if side >= length:
        return [0]
    stride = max(1.0, side * (1.0 - overlap))
    count = math.ceil((length - side) / stride) + 1
    return [round(index * (length - side) / (count - 1)) for index in range(count)]


def plan_tiles(height: int, width: int, options: TileOptions, *, tile_size: int) -> list[Tile]:
    """The windows of every scale for an image of `height` x `width`; empty when no scale needs windows smaller
    than the image, or the image fits the model input (then tiling is the global pass)."""
    tiles: list[Tile] = []
    if max(height, width) <= tile_size:
        return tiles
    seen_sides: set[int] = set()
    for scale in options.scales:
        side = window_side(height, width, scale, options.overlap, tile_size)
        if side >= max(height, width) or side in seen_sides:
            continue
        seen_sides.add(side)
        for top in axis_starts(height, side, options.overlap):
            for left in axis_starts(width, side, options.overlap):
                tiles.append(Tile(top, left, side, scale))
    return tiles


def working_size(height: int, width: int, tiles: Sequence[Tile], tile_size: int) -> tuple[int, int]:
    """(h, w) at which the finest windows keep the model's output resolution, never above the image's."""
    factor = min(1.0, tile_size / min(tile.size for tile in tiles))
    return max(1, round(height * factor)), max(1, round(width * factor))


def _axis_ramp(start: int, stop: int, length: int, ramp: float) -> np.ndarray:
    """1-D weights over [start, stop): a smoothstep from ~0 to 1 over `ramp` pixels at each edge that lies inside
    the image, 1 at the image border; every value is > 0."""
    positions = np.arange(start, stop, dtype=np.float64) + 0.5
    distance = np.full(stop - start, np.inf)
    if start > 0:
        distance = np.minimum(distance, positions - start)
    if stop < length:
        distance = np.minimum(distance, stop - positions)
    x = np.clip(distance / max(ramp, 1.0), 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def scaled_box(tile: Tile, factor_y: float, factor_x: float) -> tuple[int, int, int, int]:
    """The tile's (top, bottom, left, right) at a working resolution (monotone rounding keeps coverage)."""
    return (
        round(tile.top * factor_y),
        round((tile.top + tile.size) * factor_y),
        round(tile.left * factor_x),
        round((tile.left + tile.size) * factor_x),
    )


def blend_weights(
    tiles: Sequence[Tile], size: tuple[int, int], image_size: tuple[int, int], overlap: float
) -> list[np.ndarray]:
    """Per-tile weights (box-shaped arrays) on a canvas of `size` = (h, w) for tiles given in `image_size`
    pixels; within one scale they sum to exactly one at every pixel (the tiles must cover the image)."""
    height, width = size
    factor_y, factor_x = height / image_size[0], width / image_size[1]
    raw = []
    total = np.zeros(size)
    for tile in tiles:
        top, bottom, left, right = scaled_box(tile, factor_y, factor_x)
        ramp = overlap * tile.size * min(factor_y, factor_x)
        weight = np.outer(_axis_ramp(top, bottom, height, ramp), _axis_ramp(left, right, width, ramp))
        total[top:bottom, left:right] += weight
        raw.append(weight)
    if (total <= 0).any():
        raise ValueError("tiles do not cover the image")
    return [
        weight / total[top:bottom, left:right]
        for tile, weight in zip(tiles, raw, strict=True)
        for top, bottom, left, right in [scaled_box(tile, factor_y, factor_x)]
    ]


def fuse(
    global_logits: torch.Tensor,
    tile_logits: torch.Tensor,
    tiles: Sequence[Tile],
    image_size: tuple[int, int],
    options: TileOptions,
    *,
    tile_size: int,
    token_grid: int,
) -> torch.Tensor:
    """Fused logits (N, h, w) at `working_size` from global logits (N, s, s) and tile logits (T, N, s, s).

    Each scale's tiles are blended (weights summing to one), the scales averaged together with the global pass
    (weight `options.global_weight`), and the result capped by the gate: the global probability's maximum within
    `options.gate_margin` tokens (`token_grid` tokens span each image side)."""
    height, width = working_size(*image_size, tiles, tile_size)
    global_probability = _resize(global_logits, (height, width)).sigmoid()
    scales = sorted({tile.scale for tile in tiles})
    fused = global_probability * options.global_weight
    scale_weight = (1.0 - options.global_weight) / len(scales)
    factor_y, factor_x = height / image_size[0], width / image_size[1]
    for scale in scales:
        members = [index for index, tile in enumerate(tiles) if tile.scale == scale]
        weights = blend_weights([tiles[i] for i in members], (height, width), image_size, options.overlap)
        canvas = torch.zeros_like(global_probability)
        for index, weight in zip(members, weights, strict=True):
            top, bottom, left, right = scaled_box(tiles[index], factor_y, factor_x)
            probability = _resize(tile_logits[index], (bottom - top, right - left)).sigmoid()
            canvas[:, top:bottom, left:right] += probability * torch.from_numpy(weight).to(probability)
        fused += canvas * scale_weight
    ceiling = _resize_probability(gate(global_logits, options.gate_margin, token_grid), (height, width))
    fused = torch.minimum(fused, ceiling)
    return torch.logit(fused.clamp(_PROBABILITY_EPS, 1.0 - _PROBABILITY_EPS))


def gate(global_logits: torch.Tensor, margin: float, token_grid: int) -> torch.Tensor:
    """Global logits (N, s, s) -> the largest global probability within `margin` tokens of each pixel, at the
    logits' resolution (a square max filter, run as two 1-D passes)."""
    probability = global_logits.float().sigmoid()
    height, width = probability.shape[-2:]
    radius_y, radius_x = round(margin * height / token_grid), round(margin * width / token_grid)
    grown = probability[:, None]
    if radius_x:
        grown = F.max_pool2d(grown, (1, 2 * radius_x + 1), stride=1, padding=(0, radius_x))
    if radius_y:
        grown = F.max_pool2d(grown, (2 * radius_y + 1, 1), stride=1, padding=(radius_y, 0))
    return grown[:, 0]


def _resize(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) -> (N, *size), bilinear (antialiased when shrinking)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.float()
    shrinking = size[0] < logits.shape[-2] or size[1] < logits.shape[-1]
    return F.interpolate(
        logits[:, None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )[:, 0]


def _resize_probability(probability: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) probabilities -> (N, *size), bilinear (no antialiasing: a maximum must not be averaged away)."""
    if tuple(probability.shape[-2:]) == tuple(size):
        return probability
    return F.interpolate(probability[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
