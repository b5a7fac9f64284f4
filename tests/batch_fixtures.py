"""Synthetic image collections for the manifest and Ray engine tests: small photos-like images (gradients and
shapes, so that masks vary), in a folder with a subfolder, plus the bad inputs a large collection always holds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from predictor_fixtures import save_tiny_model

# --max-pixels for the collections below: every good image is smaller, BOMB_NAME is larger.
MAX_PIXELS = 20_000
BOMB_NAME = "huge.png"
BAD_NAMES = ("broken.jpg", "notes.png", BOMB_NAME)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPSeg saved as a checkpoint folder (import this fixture into a test module)."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module", autouse=True)
def pixel_limit_restored():
    """--max-pixels sets Pillow's limit for the whole process (the tests run the CLI in-process): restore it."""
    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


def synthetic_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A gradient background with a few filled ellipses and rectangles."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 255, 3)
    gradient = (xs[..., None] * rng.uniform(-2, 2, 3) + ys[..., None] * rng.uniform(-2, 2, 3) + base) % 256
    image = Image.fromarray(gradient.astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        box = (x0, y0, x0 + int(rng.integers(6, width // 2 + 8)), y0 + int(rng.integers(6, height // 2 + 8)))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def make_collection(root: Path, count: int, *, bad: bool = True) -> list[Path]:
    """`count` good images (PNG and JPEG, 40-72 px, a third in sub/) and, with `bad`, a truncated JPEG, a text
    file named .png and an image above MAX_PIXELS. Returns the good images' paths."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    good = []
    for index in range(count):
        folder = root / "sub" if index % 3 == 2 else root
        size = (40 + (index * 7) % 33, 40 + (index * 11) % 29)
        path = folder / (f"img{index:02d}.png" if index % 2 else f"img{index:02d}.jpg")
        synthetic_image(index, size).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
        good.append(path)
    if bad:
        buffer = io.BytesIO()
        synthetic_image(99, (64, 64)).save(buffer, format="JPEG")
        (root / "broken.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        (root / "notes.png").write_text("not an image at all\n")
        synthetic_image(98, (160, 160)).save(root / BOMB_NAME)
    return good


def output_files(directory: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every visible file below `directory` (relative path -> bytes), hidden files and `skip` names excluded."""
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
        and path.name not in skip
    }
