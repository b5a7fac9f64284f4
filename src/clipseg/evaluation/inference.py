"""Model loading and batched inference for the evaluation protocols.

Two input geometries are used by the benchmarks:

- ``squash``: resize the image to size x size (aspect ratio not kept) and compare with the ground truth resized
  the same way (nearest neighbour) -- PhraseCut, COCO-20i (HSNet loader), Pascal zero-shot;
- ``letterbox``: PFENet's test resize used by the paper's Pascal-5i runs: the longer side becomes `size` (never
  enlarged; sides rounded down to multiples of 8), the image sits in the top-left corner of a black size x size
  canvas, and the probabilities of that region are resized (bilinear, corners aligned) back to the original
  resolution, where the metrics are computed. (PFENet resizes the whole canvas to the longer side instead; the
  two agree up to the rounding to multiples of 8.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..model.interface import SegmentationModel
from ..predictor import Predictor

Geometry = Literal["squash", "letterbox"]
GEOMETRIES = ("squash", "letterbox")


@dataclass(frozen=True)
class Placement:
    """Where an image sits in the model input: the top-left (height, width) region of the canvas, and the size of
    the original image the metrics are computed at."""

    content: tuple[int, int]
    original: tuple[int, int]


def letterbox_size(height: int, width: int, size: int) -> tuple[int, int]:
    """PFENet's test size: longer side -> `size` (only when larger), both sides rounded down to multiples of 8."""
    if max(height, width) <= size:
        return height, width
    if height >= width:
        new_height, new_width = size, int(width * size / height)
    else:
        new_height, new_width = int(height * size / width), size
    return max(8, new_height // 8 * 8), max(8, new_width // 8 * 8)


def to_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB PIL image -> normalised float tensor (3, H, W)."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def prepare_input(
    image: Image.Image, size: int, geometry: Geometry, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, Placement]:
    """Image -> normalised (3, size, size) model input and its `Placement` (PIL bilinear resizing)."""
    width, height = image.size
    if geometry == "squash":
        resized = image.resize((size, size), Image.Resampling.BILINEAR) if image.size != (size, size) else image
        return to_tensor(resized, mean, std), Placement((size, size), (height, width))
    if geometry != "letterbox":
        raise ValueError(f"unknown input geometry {geometry!r}; expected one of {GEOMETRIES}")
    new_height, new_width = letterbox_size(height, width, size)
    resized = (
        image.resize((new_width, new_height), Image.Resampling.BILINEAR)
        if (new_height, new_width) != (height, width)
        else image
    )
    canvas = Image.new("RGB", (size, size), (0, 0, 0))  # black padding, as PFENet pads before normalising
    canvas.paste(resized, (0, 0))
    return to_tensor(canvas, mean, std), Placement((new_height, new_width), (height, width))


def place_mask(mask: np.ndarray, size: int, geometry: Geometry) -> torch.Tensor:
    """A bool (H, W) mask placed like its image by `prepare_input` (nearest neighbour; padding is background)."""
    height, width = mask.shape
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    if geometry == "squash":
        target = (size, size)
    else:
        target = letterbox_size(height, width, size)
    resized = np.asarray(image.resize((target[1], target[0]), Image.Resampling.NEAREST)) > 127
    if mask.any() and not resized.any():
        # An object smaller than one output pixel would vanish (and break visual prompts): keep its centre pixel.
        rows, columns = np.nonzero(mask)
        resized[int(rows.mean() * target[0] / height), int(columns.mean() * target[1] / width)] = True
    canvas = np.zeros((size, size), dtype=bool)
    canvas[: target[0], : target[1]] = resized
    return torch.from_numpy(canvas)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Label map resized to size x size with nearest neighbour (the squash geometry's ground truth)."""
    if labels.shape == (size, size):
        return labels
    return np.asarray(Image.fromarray(labels).resize((size, size), Image.Resampling.NEAREST))


def probabilities_at_original(probabilities: torch.Tensor, placement: Placement, geometry: Geometry) -> torch.Tensor:
    """(..., size, size) probabilities -> the geometry's evaluation resolution.

    Squash: unchanged (ground truth is resized to the input instead). Letterbox: the content region, resized
    bilinearly with aligned corners (as the paper's code resized predictions) to the original image size."""
    if geometry == "squash":
        return probabilities
    height, width = placement.content
    region = probabilities[..., :height, :width]
    if (height, width) == placement.original:
        return region
    lead = region.shape[:-2]
    resized = F.interpolate(
        region.reshape(-1, 1, height, width), size=placement.original, mode="bilinear", align_corners=True
    )
    return resized.reshape(*lead, *placement.original)


class Segmenter:
    """A model plus the conditioning caches an evaluation needs; text and support images are encoded by a
    `clipseg.Predictor` (its `encode_texts` and `encode_supports`), as in inference.

    Works with any `SegmentationModel`: `clipseg.CLIPSeg`, the baselines, an ONNX export.
    """

    def __init__(self, model: SegmentationModel, *, image_size: int = 352) -> None:
        self.model = model
        self.image_size = image_size
        self.mean = tuple(model.config.image_mean)
        self.std = tuple(model.config.image_std)
        self.predictor = Predictor(model, image_size=image_size)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, D) conditional vectors of text prompts (each distinct prompt encoded once while cached)."""
        return self.predictor.encode_texts(prompts)

    def support_embeddings(
        self, images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], variant: str
    ) -> torch.Tensor:
        """(N, D) conditional vectors of support images prepared with a visual prompt `variant`."""
        return self.predictor.encode_supports(images, masks, variant)

    @torch.inference_mode()
    def probabilities(
        self, images: torch.Tensor, conditionals: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sigmoid probabilities (N, H, W) for N conditionals over B images (pairing as in ``model.decode``)."""
        images = images.to(self.device)
        features = self.model.extract_features(images)
        logits = self.model.decode(
            features,
            conditionals.to(self.device),
            output_size=tuple(images.shape[-2:]),
            image_index=None if image_index is None else image_index.to(self.device),
        )
        return torch.sigmoid(logits[:, 0].float())
