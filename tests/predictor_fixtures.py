"""Shared helpers for the predictor, image and CLI tests: a tiny random CLIPSeg and real photos with EXIF tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import clipseg
from clipseg.model.config import CLIPSegConfig, DecoderConfig, TextConfig, VisionConfig
from clipseg.testing import he_init_

# EXIF tag 0x0112; value 6 means "rotate 90 degrees clockwise to display" (the photo is stored lying on its side).
ORIENTATION_TAG = 0x0112


def narrow_config(head: str = "refined") -> CLIPSegConfig:
    """The predictor and CLI tests' model (their bounds were set on it): narrower than
    `clipseg.testing.tiny_config()`, at CLIPSeg's 352 px input."""
    return CLIPSegConfig(
        vision=VisionConfig(width=64, layers=4, heads=2, mlp_width=128, patch_size=16, output_dim=32),
        text=TextConfig(width=32, layers=2, heads=2, mlp_width=64, output_dim=32),
        decoder=DecoderConfig(reduce_dim=16, heads=2, mlp_width=32, extract_layers=(1, 2, 3), head=head),
    )


def tiny_model(seed: int = 0, head: str = "refined") -> clipseg.CLIPSeg:
    """Random weights re-drawn He-scaled with zero biases, so that logits vary across pixels and prompts (the
    default init leaves them almost constant). The same `seed` gives the same weights in every process: the
    parameters `he_init_` keeps (the class embedding) are drawn from a seeded generator too, without touching the
    global one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clipseg.CLIPSeg(narrow_config(head))
    return he_init_(model, seed=seed).eval()


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
