"""Visual prompt engineering: turn a support image and its object mask into a CLIP image prompt (paper Sec. 4).

All operations work on the *normalised* image tensor (ImageNet mean/std), as in the original implementation:
the background (everything outside the mask) is optionally blurred with a 15x15 Gaussian and scaled by a factor
(``image * mask + bg_factor * blurred * (1 - mask)``), then the result is optionally cropped to the mask's
bounding box plus context, zero-padded to a square and resized to the prompt size with nearest-neighbour
interpolation. The CLIP-internal variants leave the image alone and instead return a token mask for
``model.encode_image(pixel_values, token_mask=..., token_mask_mode=...)``.

``VARIANTS`` holds one named setting per row of the paper's Table 2, plus the unmodified image (``"none"``) and
the Table 9 ablation ``"blur_highlight"``. The default, used for training and one-shot evaluation, is
``"crop_blur_highlight"`` (crop with 10 % context + background blur sigma 3 + background intensity 10 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model.clip import TokenMaskMode
from .model.config import IMAGENET_MEAN, IMAGENET_STD

BLUR_KERNEL_SIZE = 15
# ITU-R 601 luma weights, as used by the original's RGB -> grayscale conversion.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_OUTLINE_THICKNESS = 5

@dataclass(frozen=True)
class VisualPromptSpec:
    """How image and mask are combined into a visual prompt.

    Attributes:
        description: the setting's name in the paper (Table 2 / Table 9).
        blur_sigma: sigma of the 15x15 Gaussian blur of the background; 0 leaves it sharp.
        background_factor: intensity of the background relative to the object (1.0 keeps it, 0.0 blacks it out
            in normalised space, i.e. sets it to the ImageNet mean colour).
        crop_context: crop to the mask's bounding box enlarged by this fraction of its extent on each side, or
            None for no crop.
        dye_red: show a grayscale image with the object tinted red.
        red_outline: draw a 5-pixel red line along the object's boundary.
        shift: constant added to the normalised result (the original ``blur_highlight`` mode subtracts 0.01).
        token_mask_mode: CLIP-internal attention masking mode, or None for pure image-space prompts.
    """

    description: str
    blur_sigma: float = 0.0
    background_factor: float = 1.0
    crop_context: float | None = None
    dye_red: bool = False
    red_outline: bool = False
    shift: float = 0.0
    token_mask_mode: TokenMaskMode | None = None


VARIANTS: dict[str, VisualPromptSpec] = {
    "none": VisualPromptSpec("original image (no highlighting)"),
    # Table 2, left column: CLIP modification & extras.
    "cls_mask_last": VisualPromptSpec("CLIP masking CLS in layer 11", token_mask_mode="cls_last"),
    "cls_mask_all": VisualPromptSpec("CLIP masking CLS in all layers", token_mask_mode="cls_all"),
    "all_tokens_all_layers": VisualPromptSpec("CLIP masking all in all layers", token_mask_mode="all_all"),
    "dye_red_grayscale": VisualPromptSpec("dye object red in grayscale image", dye_red=True),
    "red_outline": VisualPromptSpec("add red object outline", red_outline=True),
    # Table 2, middle column: background modification.
    "bg_intensity_50": VisualPromptSpec("BG intensity 50%", background_factor=0.5),
    "bg_intensity_10": VisualPromptSpec("BG intensity 10%", background_factor=0.1),
    "bg_intensity_0": VisualPromptSpec("BG intensity 0%", background_factor=0.0),
    "blur": VisualPromptSpec("BG blur", blur_sigma=3.0),
    "blur_bg_intensity_10": VisualPromptSpec("BG blur + intensity 10%", blur_sigma=3.0, background_factor=0.1),
    # Table 2, right column: cropping & combinations.
    "crop_large_context": VisualPromptSpec("crop large context", crop_context=0.5),
    "crop": VisualPromptSpec("crop", crop_context=0.1),
    # These two rows are what the released Visual_Feature_Engineering notebook ran under these names (and so what
    # Table 2 reports): img_preprocess(blur=3, center_context=0.5), and img_preprocess(blur=3, bg_fac=0.1) without a
    # crop. The combinations the names describe are `VisualPromptSpec(blur_sigma=3.0, crop_context=0.1)` and
    # `VisualPromptSpec(background_factor=0.1, crop_context=0.1)`.
    "crop_blur": VisualPromptSpec("crop & BG blur", blur_sigma=3.0, crop_context=0.5),
    "crop_bg_intensity_10": VisualPromptSpec("crop & BG intensity 10%", blur_sigma=3.0, background_factor=0.1),
    "crop_blur_highlight": VisualPromptSpec(
        "crop & BG intensity 10% + BG blur", blur_sigma=3.0, background_factor=0.1, crop_context=0.1
    ),
    # Table 9 ablation "highlight mask": the original's blur_highlight mode (blur sigma 1, background 50 %).
    "blur_highlight": VisualPromptSpec("highlight mask (Table 9)", blur_sigma=1.0, background_factor=0.5, shift=-0.01),
}
DEFAULT_VARIANT = "crop_blur_highlight"


@dataclass(frozen=True)
class SupportPrompt:
    """A prepared visual prompt.

    Attributes:
        pixel_values: (3, size, size) normalised image for ``model.encode_image``.
        token_mask: (size, size) float mask in {0, 1} for the CLIP-internal variants, else None.
        token_mask_mode: ``"cls_last"``, ``"cls_all"`` or ``"all_all"`` with a token mask, else None.
    """

    pixel_values: torch.Tensor
    token_mask: torch.Tensor | None
    token_mask_mode: TokenMaskMode | None


def gaussian_kernel1d(sigma: float, size: int = BLUR_KERNEL_SIZE, device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of `size` taps centred on the middle one (the separable factor of the 2-D blur)."""
    if sigma <= 0:
        raise ValueError(f"Gaussian sigma must be positive, got {sigma}")
    offsets = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (weights / weights.sum()).float()


def gaussian_blur(image: torch.Tensor, sigma: float, kernel_size: int = BLUR_KERNEL_SIZE) -> torch.Tensor:
    """Blur a (C, H, W) tensor with a separable `kernel_size` x `kernel_size` Gaussian.

    Borders are mirrored without repeating the edge pixel (OpenCV's default BORDER_REFLECT_101); images too small
    to mirror a full half-kernel repeat the edge pixel instead.
    """
    kernel = gaussian_kernel1d(sigma, kernel_size, image.device).to(image.dtype)
    channels = image.shape[0]
    half = kernel_size // 2
    padding_mode = "reflect" if min(image.shape[-2:]) > half else "replicate"
    padded = F.pad(image[None], (half, half, half, half), mode=padding_mode)
    # Contiguous per-channel weights: an expanded (stride-0) weight sends grouped conv2d down a much slower path.
    horizontal = kernel.view(1, 1, 1, kernel_size).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, kernel_size, 1).repeat(channels, 1, 1, 1)
    blurred = F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)
    return blurred[0]


def mask_crop_box(mask: torch.Tensor, context: float) -> tuple[int, int, int, int]:
    """Crop box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of a mask's bounding box plus context.

    Each side grows by `context` times the box's extent along that axis; coordinates are truncated to integers
    and clipped to the image, as in the original implementation.
    """
    if not bool((mask > 0).any()):
        raise ValueError("cannot crop to an empty mask")
    height, width = mask.shape
    columns = torch.nonzero((mask > 0).any(dim=0)).flatten()
    rows = torch.nonzero((mask > 0).any(dim=1)).flatten()
    x0, x1 = int(columns[0]), int(columns[-1]) + 1
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    extent_x, extent_y = x1 - x0, y1 - y0
    return (
        int(max(0.0, x0 - context * extent_x)),
        int(max(0.0, y0 - context * extent_y)),
        int(min(float(width), x1 + context * extent_x)),
        int(min(float(height), y1 + context * extent_y)),
    )


def pad_to_square(image: torch.Tensor) -> torch.Tensor:
    """Zero-pad a (C, H, W) tensor to a square, splitting the padding evenly (the extra pixel goes after)."""
    height, width = image.shape[-2:]
    pad_x = max(height - width, 0)
    pad_y = max(width - height, 0)
    return F.pad(image, (pad_x // 2, pad_x - pad_x // 2, pad_y // 2, pad_y - pad_y // 2))


def _statistics(values: tuple[float, ...] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


def _denormalise(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (image * std + mean).clamp(0.0, 1.0)


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """Float map of a line `_OUTLINE_THICKNESS` pixels wide centred on the mask's boundary pixels."""
    binary = (mask > 0).float()[None, None]
    # Erode with a zero border, so that objects touching the image edge are outlined there as well.
    eroded = -F.max_pool2d(-F.pad(binary, (1, 1, 1, 1)), kernel_size=3, stride=1)
    boundary = binary - eroded
    radius = _OUTLINE_THICKNESS // 2
    return F.max_pool2d(boundary, kernel_size=_OUTLINE_THICKNESS, stride=1, padding=radius)[0, 0]


def _resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image[None], (size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _validate(
    image: torch.Tensor, mask: torch.Tensor, allow_empty: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.as_tensor(image)
    mask = torch.as_tensor(mask)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"support image must be a normalised (3, H, W) tensor, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"support image must be a float tensor (normalised), got dtype {image.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"support mask must be an (H, W) tensor, got shape {tuple(mask.shape)}")
    if tuple(mask.shape) != tuple(image.shape[-2:]):
        raise ValueError(
            f"support mask size {tuple(mask.shape)} does not match the image size {tuple(image.shape[-2:])}"
        )
    mask = mask.to(device=image.device, dtype=image.dtype)
    if bool(((mask < 0) | (mask > 1)).any()):
        raise ValueError("support mask values must lie in [0, 1]")
    if not allow_empty and not bool((mask > 0).any()):
        raise ValueError("support mask is empty: a visual prompt needs at least one object pixel")
    return image, mask


def apply_visual_prompt(
    image: torch.Tensor,
    mask: torch.Tensor,
    spec: VisualPromptSpec,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    *,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Combine a normalised (3, H, W) image and its (H, W) mask in image space, without resizing.

    Returns a normalised (3, H', W') tensor: the full image size, or the square crop when ``spec.crop_context``
    is set. The token mask of CLIP-internal variants is not applied here (see `prepare_support`). With
    `allow_empty`, an empty mask makes the whole image background, uncropped (see `prepare_support`).
    """
    image, mask = _validate(image, mask, allow_empty)
    mean_t, std_t = _statistics(mean, image), _statistics(std, image)
    background = gaussian_blur(image, spec.blur_sigma) if spec.blur_sigma > 0 else image
    prompt = image * mask + spec.background_factor * background * (1 - mask)
    if spec.dye_red:
        plain = _denormalise(image, mean_t, std_t)
        gray = (plain * _statistics(_LUMA_WEIGHTS, image)).sum(dim=0, keepdim=True)
        red_tint = _statistics((1.0, 0.2, 0.2), image)
        prompt = (red_tint * gray * mask + spec.background_factor * gray * (1 - mask) - mean_t) / std_t
    if spec.red_outline:
        outline = _outline(mask)
        red = _statistics((1.0, 0.0, 0.0), image)
        prompt = (red * outline + _denormalise(prompt, mean_t, std_t) * (1 - outline) - mean_t) / std_t
    if spec.crop_context is not None:
        has_object = bool((mask > 0).any())
        x0, y0, x1, y1 = mask_crop_box(mask, spec.crop_context) if has_object else (0, 0, *mask.shape[::-1])
        prompt = pad_to_square(prompt[:, y0:y1, x0:x1])
    return prompt + spec.shift


def prepare_support(
    image: torch.Tensor,
    mask: torch.Tensor,
    variant: str | VisualPromptSpec = DEFAULT_VARIANT,
    size: int = 352,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    allow_empty: bool = False,
) -> SupportPrompt:
    """Build the visual prompt for a support image and its object mask.

    Args:
        image: normalised (3, H, W) float tensor (ImageNet mean/std unless `mean`/`std` say otherwise).
        mask: (H, W) object mask, bool or float in [0, 1], with at least one object pixel.
        variant: a name from `VARIANTS` or a custom `VisualPromptSpec`.
        size: side of the square output. Crops are resized with nearest-neighbour interpolation as in the original
            implementation; uncropped images bilinearly (a no-op when the image already has this size).
        allow_empty: accept a mask without object pixels and treat the whole image as background (blurred and
            darkened, not cropped), as the released training code did when a support's crop missed its object.

    Returns:
        SupportPrompt with (3, size, size) pixel values, plus a (size, size) token mask and its mode for the
        CLIP-internal masking variants.

    Raises:
        ValueError: unknown variant, empty mask, or mask and image sizes that differ.
    """
    if isinstance(variant, str):
        if variant not in VARIANTS:
            raise ValueError(f"unknown visual prompt variant {variant!r}; choose one of {sorted(VARIANTS)}")
        spec = VARIANTS[variant]
    else:
        spec = variant
    if size < 1:
        raise ValueError(f"visual prompt size must be positive, got {size}")
    image, mask = _validate(image, mask, allow_empty)
    prompt = apply_visual_prompt(image, mask, spec, mean, std, allow_empty=allow_empty)
    if spec.crop_context is not None:
        pixel_values = F.interpolate(prompt[None], (size, size), mode="nearest")[0]
    else:
        pixel_values = _resize_image(prompt, size)
    if spec.token_mask_mode is None:
        return SupportPrompt(pixel_values, None, None)
    token_mask = F.interpolate((mask > 0).to(image.dtype)[None, None], (size, size), mode="nearest")[0, 0]
    return SupportPrompt(pixel_values, token_mask, spec.token_mask_mode)
