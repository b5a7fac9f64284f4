"""Uploaded files -> images, masks and image prompts, in memory, every problem an `ApiError` with its status."""

from __future__ import annotations

from PIL import Image

from ..image import ImageLoadError, ImageTooLargeError, NotAnImageError, decode_image_bytes, load_image
from ..prompts import ImagePrompt
from ..visual_prompt import DEFAULT_VARIANT
from .errors import ApiError

SUPPORT_NAME = "support"


def decode_upload(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """An uploaded image as 8-bit RGB (EXIF orientation applied): 413 above `max_pixels` (default: Pillow's
    limit), 415 when not an image, 422 when truncated, corrupt or unusable (no pixels, NaN values, ...)."""
    image = _decode(data, name, max_pixels)
    try:
        return load_image(image)
    except ImageLoadError as error:
        raise ApiError(422, str(error)) from None


def image_prompt(supports: list[bytes], masks: list[bytes], max_pixels: int | None) -> ImagePrompt | None:
    """The image prompt of the `support` / `support_mask` pairs (None without any), as the CLI's --support."""
    if len(supports) != len(masks):
        raise ApiError(
            422, f"{len(supports)} 'support' file(s) but {len(masks)} 'support_mask'(s): one mask per support image"
        )
    if not supports:
        return None
    images = [_decode(data, f"support {index + 1}", max_pixels) for index, data in enumerate(supports)]
    mask_images = [_decode(data, f"support_mask {index + 1}", max_pixels) for index, data in enumerate(masks)]
    try:
        return ImagePrompt(images, mask_images, variant=DEFAULT_VARIANT, name=SUPPORT_NAME)
    except ValueError as error:  # a mask of the wrong size, an empty mask, an unusable image
        raise ApiError(422, str(error)) from None


def _decode(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        return decode_image_bytes(data, name=name, max_pixels=limit)
    except ImageTooLargeError as error:
        raise ApiError(413, str(error)) from None
    except NotAnImageError as error:
        raise ApiError(415, str(error)) from None
    except ImageLoadError as error:
        raise ApiError(422, str(error)) from None
