"""Synthetic scenes of coloured shapes, and writers that store them in the official dataset formats.

No real dataset can be downloaded in tests or CI, so the readers are exercised end to end on small synthetic
datasets written here in the same on-disk layouts (PhraseCut, COCO instances JSON, the own-data folder layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
_CIRCLE_VERTICES = 32
_PLACEMENT_TRIES = 50


@dataclass(frozen=True)
class Shape:
    """One object of a synthetic scene.

    `polygon` holds one flat ``[x0, y0, x1, y1, ...]`` list per polygon (pixel coordinates, the COCO/PhraseCut
    convention) and `mask` is exactly that polygon rasterised, so readers can be checked against it.
    """

    kind: str
    colour: str
    mask: np.ndarray
    polygon: list[list[float]]
    location: str

    @property
    def phrase(self) -> str:
        """The referring phrase naming this shape, e.g. ``"red circle"``."""
        return f"{self.colour} {self.kind}"

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box ``(x, y, width, height)`` of the polygon in COCO convention."""
        xs = [x for poly in self.polygon for x in poly[0::2]]
        ys = [y for poly in self.polygon for y in poly[1::2]]
        return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


@dataclass(frozen=True)
class Scene:
    """A rendered RGB image and the shapes drawn on it (non-overlapping, so every mask is fully visible)."""

    image: Image.Image
    shapes: list[Shape]


def rasterize_polygons(polygons: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    """Rasterise flat ``[x0, y0, x1, y1, ...]`` polygons into a bool mask of `size` = (H, W) (union of all)."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) < 6 or len(polygon) % 2:
            raise ValueError(f"a polygon needs at least 3 [x, y] points as a flat list, got {len(polygon)} numbers")
        draw.polygon([(float(x), float(y)) for x, y in zip(polygon[0::2], polygon[1::2])], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _shape_outline(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a shape centred at (cx, cy) whose circumscribed circle has `radius`."""
    if kind == "circle":
        theta = np.linspace(0.0, 2.0 * math.pi, _CIRCLE_VERTICES, endpoint=False)
    elif kind == "square":
        theta = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi + angle
    elif kind == "triangle":
        theta = np.array([-0.5, 1.0 / 6.0, 5.0 / 6.0]) * math.pi + angle
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")
    return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)


def _textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted low-frequency colour noise, so that shapes are not found by a trivial colour threshold alone."""
    coarse = rng.uniform(70, 170, size=(4, 4, 3)).astype(np.uint8)
    smooth = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
    smooth = smooth.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(height, width) / 32)))
    return np.asarray(smooth, dtype=np.float32)


def _location_word(cx: float, width: int) -> str:
    if cx < width / 3:
        return "left"
    if cx > 2 * width / 3:
        return "right"
    return "middle"


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 96),
    n_shapes: tuple[int, int] = (1, 3),
    kinds: tuple[str, ...] = SHAPE_KINDS,
    colours: tuple[str, ...] = tuple(COLOURS),
) -> Scene:
    """Render a textured background with between ``n_shapes[0]`` and ``n_shapes[1]`` (inclusive) shapes.

    Shapes never overlap (placement is retried, and a shape that does not fit is left out, so at least one shape
    is always present). The result depends only on the state of `rng`.
    """
    height, width = size
    low, high = n_shapes
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16, got {size}")
    if not 1 <= low <= high:
        raise ValueError(f"n_shapes must be (low, high) with 1 <= low <= high, got {n_shapes}")
    unknown = [c for c in colours if c not in COLOURS]
    if unknown:
        raise ValueError(f"unknown colours {unknown}; expected names from {list(COLOURS)}")

    pixels = _textured_background(rng, height, width)
    occupied = np.zeros((height, width), dtype=bool)
    shapes: list[Shape] = []
    short_side = min(height, width)
    for _ in range(int(rng.integers(low, high + 1))):
        kind = str(rng.choice(kinds))
        colour = str(rng.choice(colours))
        for _ in range(_PLACEMENT_TRIES):
            radius = float(rng.uniform(0.12, 0.25) * short_side)
            cx = float(rng.uniform(radius, width - radius))
            cy = float(rng.uniform(radius, height - radius))
            angle = float(rng.uniform(-math.pi / 9, math.pi / 9))
            # Whole-pixel vertices make every polygon rasteriser convention (PIL, truncating, float) agree.
            vertices = np.round(_shape_outline(kind, cx, cy, radius, angle))
            polygon = [float(v) for v in vertices.reshape(-1)]
            mask = rasterize_polygons([polygon], size)
            if mask.any() and not (mask & occupied).any():
                break
        else:
            continue
        # Grow the occupied area by a 2-pixel margin so that neighbouring shapes never touch.
        occupied |= np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(5)), dtype=bool)
        shade = np.asarray(COLOURS[colour], dtype=np.float32) * rng.uniform(0.85, 1.0)
        pixels[mask] = shade
        shapes.append(Shape(kind, colour, mask, [polygon], _location_word(cx, width)))

    pixels += rng.normal(0.0, 4.0, size=pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return Scene(image=image, shapes=shapes)
