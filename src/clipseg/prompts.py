"""What to segment besides text: image prompts (support images with masks) and text-image mixes.

    support = ImagePrompt("example.jpg", "example_mask.png")          # visual prompt (Table 2 variants)
    predictor.predict(["a cup", support, MixedPrompt("a cup", support, text_weight=0.5)])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .image import ImageInput, MaskInput, load_image, load_mask
from .visual_prompt import DEFAULT_VARIANT, VARIANTS, VisualPromptSpec


class ImagePrompt:
    """A visual prompt: one or several support images, each with a mask of the object to find.

    Images and masks are loaded (and checked) on construction. Each example goes through the paper's visual
    prompt engineering (`clipseg.visual_prompt`, variant `variant`: default crop with 10 % context, background
    blur sigma 3, background intensity 10 %); the CLIP image embeddings of the examples are averaged.

    Args:
        images: a support image (path, PIL image, RGB array) or a list of them.
        masks: the object mask of each image (path, PIL image, bool/uint8/float array), same size as its image.
        variant: a name from `clipseg.visual_prompt.VARIANTS` (every row of the paper's Table 2) or a spec.
        name: label used for outputs and in `Prediction.names`.

    Raises:
        ValueError: unequal numbers of images and masks, a mask whose size differs from its image, an empty mask,
            or an unknown variant. Unreadable files raise as `clipseg.image.load_image` does.
    """

    def __init__(
        self,
        images: ImageInput | Sequence[ImageInput],
        masks: MaskInput | Sequence[MaskInput],
        *,
        variant: str | VisualPromptSpec = DEFAULT_VARIANT,
        name: str = "image prompt",
    ) -> None:
        image_list = list(images) if isinstance(images, (list, tuple)) else [images]
        mask_list = list(masks) if isinstance(masks, (list, tuple)) else [masks]
        if not image_list:
            raise ValueError("an image prompt needs at least one support image")
        if len(image_list) != len(mask_list):
            raise ValueError(f"{len(image_list)} support images but {len(mask_list)} support masks (one per image)")
        if isinstance(variant, str) and variant not in VARIANTS:
            raise ValueError(f"unknown visual prompt variant {variant!r}; choose one of {', '.join(sorted(VARIANTS))}")
        self.variant = variant
        self.name = name
        self.examples: list[tuple[Image.Image, np.ndarray]] = []
        digest = hashlib.sha256(repr(variant).encode())
        for index, (image_source, mask_source) in enumerate(zip(image_list, mask_list, strict=True)):
            image_name = _describe(image_source, f"support image {index + 1}")
            mask_name = _describe(mask_source, f"support mask {index + 1}")
            image = load_image(image_source)
            mask = load_mask(mask_source, name=mask_name)
            if mask.shape != (image.height, image.width):
                raise ValueError(
                    f"{mask_name} is {mask.shape[1]}x{mask.shape[0]} but {image_name} is {image.width}x{image.height} "
                    "(a support mask must have its image's size)"
                )
            if not mask.any():
                raise ValueError(f"{mask_name} is empty: mark the object in the support image")
            self.examples.append((image, mask))
            digest.update(f"{image.size}".encode())
            digest.update(image.tobytes())
            digest.update(np.packbits(mask).tobytes())
        self.key = digest.hexdigest()

    def __repr__(self) -> str:
        return f"ImagePrompt(name={self.name!r}, examples={len(self.examples)}, variant={self.variant!r})"


@dataclass(frozen=True)
class MixedPrompt:
    """Text and image prompt in one conditional vector: ``w * text + (1 - w) * image`` (the paper's
    image-text interpolation; `text_weight` is w)."""

    text: str
    image: ImagePrompt
    text_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.text_weight <= 1.0:
            raise ValueError(f"text_weight must lie in [0, 1], got {self.text_weight}")


Prompt = str | ImagePrompt | MixedPrompt


def prompt_list(prompts: Prompt | Sequence[Prompt] | None) -> list[Prompt]:
    """One prompt, a sequence of prompts or None (no prompts) as a list."""
    if prompts is None:
        return []
    if isinstance(prompts, (str, ImagePrompt, MixedPrompt)):
        return [prompts]
    return list(prompts)


def prompt_name(prompt: Prompt) -> str:
    """The label of a prompt in outputs and `Prediction.names`: the text, or the image prompt's name."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, ImagePrompt):
        return prompt.name
    return prompt.text


def _describe(source: object, fallback: str) -> str:
    return str(source) if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__") else fallback
