"""Model loading and batched inference for the evaluation protocols.

Inputs are resized as each benchmark's original pipeline did (issue 12, item 7). Two input geometries:

- ``squash``: resize the image to size x size (aspect ratio not kept) and compare with the ground truth resized
  the same way -- PhraseCut, COCO-20i (HSNet loader), Pascal zero-shot, LVIS. The image resize is ``aligned``
  (PhraseCut: the original ``load_sample``'s ``F.interpolate`` bilinear with ``align_corners=True`` on 0-255
  floats, no antialiasing; the same function as training, `clipseg.data.resizing`) or ``pil`` (torchvision's
  ``Resize`` of a PIL image = PIL bilinear: HSNet's COCO loader; also used for Pascal zero-shot and LVIS, whose
  original loaders were not released); masks and label maps use torch's nearest neighbour, as the original
  loaders did.
- ``letterbox``: PFENet's ``test_Resize`` used by the paper's Pascal-5i runs: the longer side becomes `size` (only
  when larger; sides rounded down to multiples of 8), OpenCV ``INTER_LINEAR`` (no antialiasing) on float pixels,
  placed top-left on a black size x size canvas; support masks OpenCV ``INTER_NEAREST``. The metrics are computed
  at the original resolution as the released scorer did (``resize_pred``): the prediction of the *whole* canvas is
  resized (bilinear, corners aligned) to L x L, L the original's longer side, and its top-left H x W region kept.

A tiny object that vanishes in the resize leaves an empty mask, as in the original (no ground-truth rescue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.resizing import normalise, resize_image_aligned, resize_nearest
from ..model.interface import SegmentationModel
from ..predictor import Predictor

Geometry = Literal["squash", "letterbox"]
GEOMETRIES = ("squash", "letterbox")
ImageResize = Literal["aligned", "pil"]
IMAGE_RESIZES = ("aligned", "pil")


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
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    return normalise(pixels, mean, std)


def _opencv():
    try:
        import cv2
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError(
            "the letterbox geometry (PFENet's test resize) needs OpenCV: pip install 'clipseg[eval]'"
        ) from None
    return cv2


def prepare_input(
    image: Image.Image,
    size: int,
    geometry: Geometry,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    resize: ImageResize = "pil",
) -> tuple[torch.Tensor, Placement]:
    """Image -> normalised (3, size, size) model input and its `Placement` (see the module docstring)."""
    width, height = image.size
    if geometry == "squash":
        if resize == "aligned":
            pixels = resize_image_aligned(image, (size, size))
        elif resize == "pil":
            resized = image.resize((size, size), Image.Resampling.BILINEAR) if image.size != (size, size) else image
            pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1)
        else:
            raise ValueError(f"unknown image resize {resize!r}; expected one of {IMAGE_RESIZES}")
        return normalise(pixels, mean, std), Placement((size, size), (height, width))
    if geometry != "letterbox":
        raise ValueError(f"unknown input geometry {geometry!r}; expected one of {GEOMETRIES}")
    new_height, new_width = letterbox_size(height, width, size)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    if (new_height, new_width) != (height, width):
        cv2 = _opencv()
        pixels = cv2.resize(pixels, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    canvas = torch.zeros(3, size, size)  # black padding, as PFENet pads before normalising
    canvas[:, :new_height, :new_width] = torch.from_numpy(pixels).permute(2, 0, 1)
    return normalise(canvas, mean, std), Placement((new_height, new_width), (height, width))


def place_mask(mask: np.ndarray, size: int, geometry: Geometry) -> torch.Tensor:
    """A bool (H, W) mask placed like its image by `prepare_input`: torch nearest (squash) or OpenCV
    ``INTER_NEAREST`` (letterbox); padding is background. An object lost in the resize stays lost."""
    if geometry == "squash":
        return resize_nearest(mask.astype(np.uint8), (size, size)).bool()
    height, width = mask.shape
    target = letterbox_size(height, width, size)
    resized = mask.astype(np.float32)
    if target != (height, width):
        cv2 = _opencv()
        resized = cv2.resize(resized, (target[1], target[0]), interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((size, size), dtype=bool)
    canvas[: target[0], : target[1]] = resized > 0.5
    return torch.from_numpy(canvas)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Label map resized to size x size with torch's nearest neighbour (the original zero-shot loader's
    ``transforms.Resize(NEAREST)`` of a label tensor)."""
    return resize_nearest(labels, (size, size)).numpy()


def probabilities_at_original(probabilities: torch.Tensor, placement: Placement, geometry: Geometry) -> torch.Tensor:
    """(..., size, size) probabilities -> the geometry's evaluation resolution.

    Squash: unchanged (ground truth is resized to the input instead). Letterbox: as the released scorer
    (``resize_pred``): the whole canvas resized bilinearly with aligned corners to L x L (L the original's longer
    side, the padded square ground truth of the original loader), then its top-left original-size region."""
    if geometry == "squash":
        return probabilities
    height, width = placement.original
    longer = max(height, width)
    lead = probabilities.shape[:-2]
    canvas = probabilities.reshape(-1, 1, *probabilities.shape[-2:]).float()
    if canvas.shape[-2:] != (longer, longer):
        canvas = F.interpolate(canvas, size=(longer, longer), mode="bilinear", align_corners=True)
    return canvas[..., :height, :width].reshape(*lead, height, width)


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
        """(N, D) conditional vectors of support images prepared with a visual prompt `variant`. A support whose
        object vanished in the resize is still used (all background), as in the original."""
        return self.predictor.encode_supports(images, masks, variant, allow_empty=True)

    @torch.inference_mode()
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, D) conditional vectors of (N, 3, S, S) model inputs used as they are (no prompt engineering)."""
        return self.model.encode_image(pixels.to(self.device))

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
