"""Resizing as the original PhraseCut loader (`datasets/phrasecut.py`, ``load_sample``) and its other datasets did
it, shared by training and evaluation so that both see the same pixels.

Images: ``F.interpolate(..., mode="bilinear", align_corners=True)`` on 0-255 floats, no antialiasing (unlike PIL,
which averages over the whole footprint when shrinking). Masks and label maps: ``F.interpolate(mode="nearest")``,
i.e. source index ``floor(i * in / out)`` (PIL's nearest samples pixel centres instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize_image_aligned(image: Image.Image | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """RGB image (PIL or uint8 (H, W, 3)) -> (3, height, width) float 0-255, bilinear with aligned corners."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor[0]
    return F.interpolate(tensor, size, mode="bilinear", align_corners=True)[0]


def resize_nearest(values: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) mask or label map -> (height, width) tensor of the same dtype, torch's legacy nearest neighbour."""
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    if tuple(tensor.shape) == tuple(size):
        return tensor
    resized = F.interpolate(tensor[None, None].float(), size, mode="nearest")[0, 0]
    return resized.to(tensor.dtype)


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) 0-255 floats -> ``(x / 255 - mean) / std``."""
    return (pixels / 255.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
