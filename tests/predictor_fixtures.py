"""Shared helpers for the predictor, image and CLI tests: a tiny random CLIPSeg and real photos with EXIF tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import clipseg
from clipseg.testing import he_init_, tiny_config

# EXIF tag 0x0112; value 6 means "rotate 90 degrees clockwise to display" (the photo is stored lying on its side).
ORIENTATION_TAG = 0x0112


def tiny_model(seed: int = 0, head: str = "refined") -> clipseg.CLIPSeg:
    """The tiny CLIPSeg at CLIPSeg's 352 px input, its random weights re-drawn He-scaled with zero biases so that
    logits vary across pixels and prompts (the default init leaves them almost constant)."""
    return he_init_(clipseg.CLIPSeg(tiny_config(head, image_size=352)), seed=seed).eval()


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    tiny_model(seed).save_pretrained(directory)
    return directory


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as an (H, W, 3) uint8 array ("coffee", "chelsea", "astronaut", ...)."""
    from skimage import data

    return getattr(data, name)()


def save_jpeg(
    array: np.ndarray, path: Path, orientation: int | None = None, size: tuple[int, int] | None = None
) -> Path:
    """Write `array` (optionally resized to (width, height)) as JPEG, with an EXIF orientation tag if given."""
    image = Image.fromarray(array)
    if size is not None:
        image = image.resize(size, Image.Resampling.BILINEAR)
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION_TAG] = orientation
    image.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path
