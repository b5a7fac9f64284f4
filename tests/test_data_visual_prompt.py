"""Tests of the visual prompt engineering (paper Sec. 4, Table 2)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from clipseg.model.config import IMAGENET_MEAN, IMAGENET_STD
from clipseg.visual_prompt import (
    DEFAULT_VARIANT,
    VARIANTS,
    VisualPromptSpec,
    apply_visual_prompt,
    gaussian_blur,
    gaussian_kernel1d,
    mask_crop_box,
    pad_to_square,
    prepare_support,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture
def image_and_mask():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(3, 40, 50, generator=generator)
    mask = torch.zeros(40, 50)
    mask[10:20, 5:30] = 1
    return image, mask


def test_table2_rows_are_all_named():
    descriptions = {spec.description for spec in VARIANTS.values()}
    table2 = {
        "CLIP masking CLS in layer 11", "CLIP masking CLS in all layers", "CLIP masking all in all layers",
        "dye object red in grayscale image", "add red object outline", "BG intensity 50%", "BG intensity 10%",
        "BG intensity 0%", "BG blur", "BG blur + intensity 10%", "crop large context", "crop", "crop & BG blur",
        "crop & BG intensity 10%", "crop & BG intensity 10% + BG blur",
    }
    assert table2 <= descriptions
    default = VARIANTS[DEFAULT_VARIANT]
    assert (default.blur_sigma, default.background_factor, default.crop_context) == (3.0, 0.1, 0.1)


def test_gaussian_kernel_is_normalised_and_matches_the_gaussian():
    kernel = gaussian_kernel1d(3.0)
    assert kernel.shape == (15,)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(kernel, kernel.flip(0)) and kernel.argmax().item() == 7
    offsets = np.arange(15) - 7.0
    expected = np.exp(-(offsets**2) / 18.0)
    np.testing.assert_allclose(kernel.numpy(), expected / expected.sum(), rtol=1e-6)


def test_gaussian_blur_matches_scipy_with_mirrored_borders(image_and_mask):
    image, _ = image_and_mask
    blurred = gaussian_blur(image.double(), sigma=3.0)
    # truncate=7/3 gives scipy a 15-tap kernel for sigma 3; "mirror" is OpenCV's BORDER_REFLECT_101.
    channels = image.double().numpy()
    expected = np.stack([ndimage.gaussian_filter(c, sigma=3.0, mode="mirror", truncate=7 / 3) for c in channels])
    np.testing.assert_allclose(blurred.numpy(), expected, atol=1e-6)
    constant = torch.full((3, 6, 5), 2.0)
    torch.testing.assert_close(gaussian_blur(constant, 3.0), constant)


@pytest.mark.parametrize(
    "variant, factor", [("bg_intensity_50", 0.5), ("bg_intensity_10", 0.1), ("bg_intensity_0", 0.0)]
)
def test_background_factor_is_applied_exactly_outside_the_mask(image_and_mask, variant, factor):
    image, mask = image_and_mask
    prompt = prepare_support(image, mask, variant, size=40).pixel_values
    direct = apply_visual_prompt(image, mask, VARIANTS[variant])
    inside = mask.bool()
    assert torch.equal(direct[:, inside], image[:, inside])
    torch.testing.assert_close(direct[:, ~inside], factor * image[:, ~inside])
    assert prompt.shape == (3, 40, 40)


def test_blur_and_intensity_use_the_blurred_background(image_and_mask):
    image, mask = image_and_mask
    out = apply_visual_prompt(image, mask, VARIANTS["blur_bg_intensity_10"])
    inside = mask.bool()
    assert torch.equal(out[:, inside], image[:, inside])
    torch.testing.assert_close(out[:, ~inside], 0.1 * gaussian_blur(image, 3.0)[:, ~inside])


def test_mask_crop_box_adds_ten_percent_context_and_clips(image_and_mask):
    _, mask = image_and_mask
    # Box columns 5..29 (extent 25), rows 10..19 (extent 10): 2.5 and 1 pixels of context, truncated.
    assert mask_crop_box(mask, 0.1) == (2, 9, 32, 21)
    corner = torch.zeros(20, 20)
    corner[0:10, 15:20] = 1
    assert mask_crop_box(corner, 0.5) == (12, 0, 20, 15)


def test_pad_to_square_centres_with_zeros():
    padded = pad_to_square(torch.ones(1, 2, 5))
    assert padded.shape == (1, 5, 5)
    assert padded[0, :, 0].tolist() == [0, 1, 1, 0, 0]


def test_crop_blur_highlight_is_crop_of_the_highlighted_image(image_and_mask):
    image, mask = image_and_mask
    x0, y0, x1, y1 = mask_crop_box(mask, 0.1)  # 30 wide, 12 high -> padded to 30x30
    highlighted = image * mask + 0.1 * gaussian_blur(image, 3.0) * (1 - mask)
    support = prepare_support(image, mask, "crop_blur_highlight", size=30)
    assert support.token_mask is None and support.token_mask_mode is None
    assert support.pixel_values.shape == (3, 30, 30)
    torch.testing.assert_close(support.pixel_values[:, 9:21], highlighted[:, y0:y1, x0:x1])
    assert torch.all(support.pixel_values[:, :9] == 0) and torch.all(support.pixel_values[:, 21:] == 0)
    upscaled = prepare_support(image, mask, "crop_blur_highlight", size=90).pixel_values
    torch.testing.assert_close(upscaled[:, ::3, ::3], support.pixel_values)  # nearest-neighbour resize


@pytest.mark.parametrize(
    "variant, mode", [("cls_mask_last", "cls_last"), ("cls_mask_all", "cls_all"), ("all_tokens_all_layers", "all_all")]
)
def test_clip_internal_variants_return_a_token_mask(image_and_mask, variant, mode):
    image, mask = image_and_mask
    square_image, square_mask = image[:, :, :40], mask[:, :40]
    support = prepare_support(square_image, square_mask, variant, size=40)
    assert support.token_mask_mode == mode
    assert torch.equal(support.pixel_values, square_image)
    assert torch.equal(support.token_mask, square_mask)
    resized = prepare_support(square_image, square_mask, variant, size=80)
    assert resized.pixel_values.shape == (3, 80, 80) and resized.token_mask.shape == (80, 80)
    assert set(resized.token_mask.unique().tolist()) == {0.0, 1.0}


def test_dye_red_grayscale(image_and_mask):
    image, mask = image_and_mask
    plain = (apply_visual_prompt(image, mask, VARIANTS["dye_red_grayscale"]) * STD + MEAN).clamp(0, 1)
    gray = ((image * STD + MEAN).clamp(0, 1) * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    inside = mask.bool()
    torch.testing.assert_close(plain[0][~inside], gray[~inside].clamp(0, 1))
    torch.testing.assert_close(plain[1][~inside], plain[2][~inside])
    torch.testing.assert_close(plain[0][inside], gray[inside])
    torch.testing.assert_close(plain[1][inside], 0.2 * gray[inside])


def test_red_outline_follows_the_boundary(image_and_mask):
    image, mask = image_and_mask
    plain = (apply_visual_prompt(image, mask, VARIANTS["red_outline"]) * STD + MEAN)
    red = torch.tensor([1.0, 0.0, 0.0])
    for y, x in [(10, 5), (19, 29), (8, 15), (21, 15), (12, 7)]:  # on, just outside and just inside the edge
        torch.testing.assert_close(plain[:, y, x], red)
    torch.testing.assert_close(plain[:, 15, 17], (image * STD + MEAN)[:, 15, 17].clamp(0, 1))
    torch.testing.assert_close(plain[:, 30, 40], (image * STD + MEAN)[:, 30, 40].clamp(0, 1))


def test_soft_and_bool_masks_and_dtypes_are_accepted(image_and_mask):
    image, mask = image_and_mask
    from_bool = prepare_support(image.double(), mask.bool(), size=32).pixel_values
    assert from_bool.dtype == torch.float64
    torch.testing.assert_close(from_bool.float(), prepare_support(image, mask, size=32).pixel_values)
    custom = VisualPromptSpec("mine", background_factor=0.3)
    assert prepare_support(image, mask * 0.5, custom, size=16).pixel_values.shape == (3, 16, 16)


def test_bad_inputs_raise_clear_errors(image_and_mask):
    image, mask = image_and_mask
    with pytest.raises(ValueError, match="empty"):
        prepare_support(image, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="does not match the image size"):
        prepare_support(image, mask[:, :40])
    with pytest.raises(ValueError, match="unknown visual prompt variant"):
        prepare_support(image, mask, "sparkle")
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        prepare_support(image[0], mask)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_support(image, mask * 2)


def test_table2_combination_rows_are_what_the_notebook_ran():
    """Visual_Feature_Engineering.ipynb, `preprocessing_functions`: 'crop & background blur' is
    img_preprocess(blur=3, center_context=0.5) and 'crop & intensity 10%' is img_preprocess(blur=3, bg_fac=0.1)."""
    crop_blur, intensity = VARIANTS["crop_blur"], VARIANTS["crop_bg_intensity_10"]
    assert (crop_blur.blur_sigma, crop_blur.background_factor, crop_blur.crop_context) == (3.0, 1.0, 0.5)
    assert (intensity.blur_sigma, intensity.background_factor, intensity.crop_context) == (3.0, 0.1, None)
