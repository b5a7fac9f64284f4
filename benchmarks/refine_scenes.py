"""High-resolution scenes with exact masks (and exact soft alphas) for the refinement and matting benchmarks.

Every scene is drawn at 4x supersampling and area-averaged, so the coverage of each pixel by the object is known
exactly: `alpha` is that coverage, `mask` is ``alpha >= 0.5``, and the image is exactly
``alpha * foreground + (1 - alpha) * background`` (rounded to uint8). Objects have thin parts, holes and curved
edges; backgrounds and foregrounds are textured (coloured noise at several scales, stripes, or the real photos
scikit-image ships with). `fur=True` adds hair strands along the outline, for soft alpha mattes.

Also: `coarse_mask`, CLIPSeg's resolution simulated (area average to the 22x22 token grid, bilinear upsampling),
and the metrics (IoU, boundary F-score with a pixel tolerance, SAD and MSE of alphas).
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4
TOKEN_GRID = 22
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")


@dataclass(frozen=True)
class RefineScene:
    """An RGB image (H, W, 3) uint8, the object's exact coverage `alpha` (H, W) float32, and a name."""

    image: np.ndarray
    alpha: np.ndarray
    name: str

    @property
    def mask(self) -> np.ndarray:
        return self.alpha >= 0.5


def cpu_name() -> str:
    """The CPU's model name (lscpu / /proc/cpuinfo on Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def coarse_mask(mask: np.ndarray, grid: int = TOKEN_GRID) -> np.ndarray:
    """CLIPSeg's resolution: the exact mask area-averaged to grid x grid, upsampled bilinearly to full size."""
    height, width = mask.shape
    small = cv2.resize(mask.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
    return np.clip(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(prediction, truth).sum()
    return float(np.logical_and(prediction, truth).sum() / union) if union else 1.0


def _boundary(mask: np.ndarray) -> np.ndarray:
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return mask & ~eroded.astype(bool)


def boundary_f(prediction: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> float:
    """Boundary F-score: precision/recall of boundary pixels lying within `tolerance` pixels of the other
    mask's boundary (Euclidean distance)."""
    predicted, true = _boundary(prediction), _boundary(truth)
    if not predicted.any() and not true.any():
        return 1.0
    if not predicted.any() or not true.any():
        return 0.0
    to_true = cv2.distanceTransform((~true).astype(np.uint8), cv2.DIST_L2, 5)
    to_predicted = cv2.distanceTransform((~predicted).astype(np.uint8), cv2.DIST_L2, 5)
    precision = float((to_true[predicted] <= tolerance).mean())
    recall = float((to_predicted[true] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def sad(alpha: np.ndarray, truth: np.ndarray) -> float:
    """Sum of absolute differences, in thousands (the matting benchmarks' unit)."""
    return float(np.abs(alpha.astype(np.float64) - truth).sum() / 1000.0)


def mse(alpha: np.ndarray, truth: np.ndarray) -> float:
    return float(((alpha.astype(np.float64) - truth) ** 2).mean())


def _noise_texture(rng: np.random.Generator, height: int, width: int, contrast: float) -> np.ndarray:
    """Coloured noise summed over several scales around a random base colour, float32 (H, W, 3) in [0, 255]."""
    base = rng.uniform(40, 215, size=3)
    texture = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((3, 1.0), (12, 0.6), (48, 0.4), (max(height, width) // 4, 0.3)):
        coarse = rng.normal(0.0, 1.0, size=(cells, cells, 3)).astype(np.float32)
        texture += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.4:  # stripes: strong straight edges that are not object boundaries
        angle, period = rng.uniform(0, math.pi), rng.uniform(0.02, 0.08) * max(height, width)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        texture += 1.5 * np.sign(np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period))[..., None]
    return np.clip(base + contrast * texture, 0, 255)


def _photo_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    from skimage import data

    photo = getattr(data, str(rng.choice(PHOTOS)))()
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    return cv2.resize(photo[..., :3], (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    if rng.random() < 0.35:
        return _photo_texture(rng, height, width)
    return _noise_texture(rng, height, width, contrast=rng.uniform(8, 30))


def _draw_object(rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """One object in white on a black supersampled canvas: a curved blob with thin limbs, maybe with holes."""
    short = min(width, height)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    radius = rng.uniform(0.15, 0.3) * short
    theta = np.linspace(0, 2 * math.pi, 180, endpoint=False)
    wobble = sum(rng.uniform(0, 0.18) * np.sin(k * theta + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
    r = radius * (1 + wobble)
    draw.polygon(list(zip(cx + r * np.cos(theta), cy + r * np.sin(theta) * rng.uniform(0.6, 1.0))), fill=255)
    for _ in range(int(rng.integers(1, 5))):  # thin limbs: legs, antennas, handles
        angle = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.6, 1.5) * radius
        thickness = max(2, int(rng.uniform(0.01, 0.05) * short))
        start = (cx + 0.8 * radius * math.cos(angle), cy + 0.8 * radius * math.sin(angle))
        bend = angle + rng.uniform(-0.6, 0.6)
        middle = (start[0] + 0.5 * length * math.cos(angle), start[1] + 0.5 * length * math.sin(angle))
        end = (middle[0] + 0.5 * length * math.cos(bend), middle[1] + 0.5 * length * math.sin(bend))
        draw.line([start, middle, end], fill=255, width=thickness, joint="curve")
    for _ in range(int(rng.integers(0, 3))):  # holes
        hole = rng.uniform(0.1, 0.3) * radius
        hx, hy = cx + rng.uniform(-0.4, 0.4) * radius, cy + rng.uniform(-0.3, 0.3) * radius
        draw.ellipse((hx - hole, hy - hole * rng.uniform(0.5, 1.0), hx + hole, hy + hole), fill=0)
    if rng.random() < 0.5:  # a second, separate object
        ox, oy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        size = rng.uniform(0.04, 0.1) * short
        draw.ellipse((ox - size, oy - size * 0.7, ox + size, oy + size * 0.7), fill=255)


def _draw_fur(rng: np.random.Generator, canvas: Image.Image, strands: int) -> None:
    """Hair strands growing outwards from the object's outline (1-3 supersampled pixels wide)."""
    solid = np.asarray(canvas) > 0
    edge = solid & ~cv2.erode(solid.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    ys, xs = np.nonzero(edge)
    if not len(xs):
        return
    distance = cv2.distanceTransform((~solid).astype(np.uint8), cv2.DIST_L2, 5)
    grad_y, grad_x = np.gradient(cv2.GaussianBlur(distance, (0, 0), 4))
    draw = ImageDraw.Draw(canvas)
    short = min(canvas.size)
    for index in rng.integers(0, len(xs), size=strands):
        x, y = float(xs[index]), float(ys[index])
        direction = math.atan2(grad_y[ys[index], xs[index]], grad_x[ys[index], xs[index]]) + rng.normal(0, 0.4)
        length = rng.uniform(0.01, 0.04) * short
        points = [(x, y)]
        for _ in range(4):
            direction += rng.normal(0, 0.2)
            x, y = x + length / 4 * math.cos(direction), y + length / 4 * math.sin(direction)
            points.append((x, y))
        draw.line(points, fill=255, width=int(rng.integers(1, 4)))


def make_scene(
    rng: np.random.Generator, size: tuple[int, int] = (1024, 1024), *, fur: bool = False, blur: float = 0.0
) -> RefineScene:
    """A scene of `size` = (H, W); `blur` (pixels, Gaussian sigma) softens the alpha like defocus."""
    height, width = size
    canvas = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    _draw_object(rng, ImageDraw.Draw(canvas), *canvas.size)
    if fur:
        _draw_fur(rng, canvas, strands=int(rng.integers(300, 900)))
    fine = np.asarray(canvas, dtype=np.float32) / 255.0
    alpha = cv2.resize(fine, (width, height), interpolation=cv2.INTER_AREA)
    if blur > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), blur)
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    foreground, background = _texture(rng, height, width), _texture(rng, height, width)
    pixels = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    pixels += rng.normal(0, 2.0, size=pixels.shape)
    name = f"{width}x{height}{' fur' if fur else ''}"
    return RefineScene(np.clip(np.round(pixels), 0, 255).astype(np.uint8), alpha, name)
