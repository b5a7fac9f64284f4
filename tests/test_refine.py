"""Edge-aware refinement and alpha matting (clipseg.refine) on scenes whose right answer is known by construction."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipseg.refine import MissingExtraError, alpha_matte, refine

HEIGHT, WIDTH, EDGE = 240, 320, 170  # the object fills columns >= EDGE


def step_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A photo split at column EDGE (dark textured background, bright object) and CLIPSeg's view of the object:
    its exact mask box-averaged to the 22x22 token grid (PIL), upsampled bilinearly to full size."""
    rng = np.random.default_rng(seed)
    image = np.empty((HEIGHT, WIDTH, 3), np.float64)
    image[:, :EDGE] = (60, 70, 90)
    image[:, EDGE:] = (210, 180, 60)
    image += rng.normal(0, 6, image.shape)
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[:, EDGE:] = True
    return np.clip(image, 0, 255).astype(np.uint8), coarse_view(mask)


def edge_column(probabilities: np.ndarray) -> float:
    """Mean column where each row first reaches 0.5."""
    return float(np.mean(np.argmax(np.asarray(probabilities) >= 0.5, axis=1)))


def coarse_view(mask: np.ndarray) -> np.ndarray:
    """CLIPSeg's view of an exact mask: box-averaged to the 22x22 token grid (PIL), upsampled bilinearly."""
    height, width = mask.shape
    tokens = Image.fromarray(mask.astype(np.float32), mode="F").resize((22, 22), Image.Resampling.BOX)
    return np.clip(np.asarray(tokens.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32), 0, 1)


def test_refine_snaps_a_coarse_mask_to_the_photos_edges() -> None:
    """An ellipse with a thin arm and a rectangle (rounded off by the token grid) on a noisy background: the
    refined mask disagrees with the exact one on at most 60 % as many pixels as the plain upsampled mask."""
    height, width = 480, 640
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((200, 120, 380, 330), fill=255)
    draw.line([(370, 220), (560, 120)], fill=255, width=10)
    draw.rectangle((60, 300, 140, 420), fill=255)
    mask = np.asarray(canvas) > 0
    rng = np.random.default_rng(0)
    image = np.where(mask[..., None], (200, 170, 60), (60, 80, 110)) + rng.normal(0, 8, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    coarse = coarse_view(mask)
    plain_errors = ((coarse >= 0.5) != mask).sum()
    refined_errors = ((refine(coarse, image) >= 0.5) != mask).sum()
    assert refined_errors <= 0.6 * plain_errors


def test_a_straight_edge_stays_on_the_photos_edge() -> None:
    image, probabilities = step_scene()
    refined = refine(probabilities, image)
    assert abs(edge_column(refined) - EDGE) <= 1
    # Far from the edge the answer does not change side.
    assert (refined[:, :100] < 0.5).all() and (refined[:, 250:] >= 0.5).all()


def test_a_radius_below_one_is_a_fraction_of_the_longer_side() -> None:
    image, probabilities = step_scene()
    np.testing.assert_array_equal(refine(probabilities, image, radius=0.05), refine(probabilities, image, radius=16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_in_numpy_out(dtype: type) -> None:
    image, probabilities = step_scene()
    refined = refine(probabilities.astype(dtype), image)
    assert isinstance(refined, np.ndarray) and refined.dtype == dtype and refined.shape == (HEIGHT, WIDTH)
    assert refined.min() >= 0.0 and refined.max() <= 1.0
    alpha = alpha_matte(probabilities.astype(dtype), image)
    assert isinstance(alpha, np.ndarray) and alpha.dtype == dtype and alpha.shape == (HEIGHT, WIDTH)
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out_with_a_pil_guide(dtype: torch.dtype) -> None:
    image, probabilities = step_scene()
    tensor = torch.from_numpy(probabilities).to(dtype)
    refined = refine(tensor, Image.fromarray(image), method="guided")
    assert isinstance(refined, torch.Tensor) and refined.dtype == dtype and refined.shape == (HEIGHT, WIDTH)
    assert 0.0 <= float(refined.min()) and float(refined.max()) <= 1.0
    np.testing.assert_allclose(refined.numpy(), refine(probabilities, image), atol=1e-6)
    alpha = alpha_matte(tensor, Image.fromarray(image))
    assert isinstance(alpha, torch.Tensor) and alpha.dtype == dtype and alpha.shape == (HEIGHT, WIDTH)
    assert 0.0 <= float(alpha.min()) and float(alpha.max()) <= 1.0


def test_certain_maps_stay_certain() -> None:
    image, _ = step_scene()
    for value in (0.0, 1.0):
        certain = np.full((HEIGHT, WIDTH), value, np.float32)
        np.testing.assert_allclose(refine(certain, image), value, atol=1e-5)


def test_alpha_matte_recovers_a_soft_edge() -> None:
    """Two flat colours mixed by a linear alpha ramp: the closed-form matting model (alpha linear in the colour
    within each window) holds exactly, so the matte must reproduce the ramp; the coarse map does not."""
    columns = np.arange(WIDTH, dtype=np.float64)
    truth = np.tile(np.clip((columns - 140) / 60.0, 0, 1), (HEIGHT, 1))  # 0 left of 140, 1 right of 200
    foreground, background = np.array([230.0, 200.0, 40.0]), np.array([30.0, 60.0, 150.0])
    image = np.round(truth[..., None] * foreground + (1 - truth[..., None]) * background).astype(np.uint8)
    coarse = np.tile(1 / (1 + np.exp(-(columns - 160) / 25.0)), (HEIGHT, 1)).astype(np.float32)
    alpha = alpha_matte(coarse, image, foreground=0.95, background=0.05, erode=0)
    assert np.abs(alpha - truth).mean() < 0.02
    assert np.abs(coarse - truth).mean() > 0.05


def test_alpha_matte_falls_back_to_the_soft_mask_without_sure_regions() -> None:
    image, _ = step_scene()
    unsure = np.full((HEIGHT, WIDTH), 0.6, np.float32)  # no sure foreground, no sure background
    np.testing.assert_array_equal(alpha_matte(unsure, image), unsure)
    no_background = np.linspace(0.5, 1.0, WIDTH, dtype=np.float32)[None].repeat(HEIGHT, 0)
    np.testing.assert_array_equal(alpha_matte(no_background, image), no_background)


def test_alpha_matte_bounds_the_matted_area_on_a_large_image() -> None:
    """A 1200x1600 photo with max_pixels 20 000: matting runs downscaled and still follows the edge."""
    image, probabilities = step_scene()
    big_image = np.asarray(Image.fromarray(image).resize((1600, 1200), Image.Resampling.NEAREST))
    big_map = np.asarray(Image.fromarray(probabilities, mode="F").resize((1600, 1200), Image.Resampling.BILINEAR))
    alpha = alpha_matte(np.clip(big_map, 0, 1), big_image, max_pixels=20_000)
    assert alpha.shape == (1200, 1600)
    assert abs(edge_column(alpha) - EDGE * 5) <= 10


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, i: refine(p, i, method="bilateral"), "unknown refine method 'bilateral'"),
        (lambda p, i: refine(p, i, radius=0), "radius"),
        (lambda p, i: refine(p, i, eps=-1), "eps"),
        (lambda p, i: refine(p, i, iterations=0), "iterations"),
        (lambda p, i: refine(p, i, iterations=1.5), "iterations"),
        (lambda p, i: refine(p, i, sharpnes=2), "unknown option 'sharpnes'"),
        (lambda p, i: refine(p, i, radius="big"), "radius must be a number"),
        (lambda p, i: refine(p[:100], i), "same size"),
        (lambda p, i: refine(p * 2, i), r"\[0, 1\]"),
        (lambda p, i: refine(np.where(p > 0.5, np.nan, p), i), "NaN"),
        (lambda p, i: refine(p[None], i), r"\(H, W\)"),
        (lambda p, i: refine((p > 0.5).astype(np.uint8), i), "float"),
        (lambda p, i: alpha_matte(p, i, foreground=0.2, background=0.4), "below foreground"),
        (lambda p, i: alpha_matte(p, i, erode=-3), "erode"),
        (lambda p, i: alpha_matte(p, i, max_pixels=10), "max_pixels"),
        (lambda p, i: alpha_matte(p, i, band=3), "unknown option 'band'"),
    ],
)
def test_bad_values_get_one_line_errors(call, message: str) -> None:
    image, probabilities = step_scene()
    with pytest.raises(ValueError, match=message) as error:
        call(probabilities, image)
    assert "\n" not in str(error.value)


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    image, probabilities = step_scene()
    monkeypatch.setitem(sys.modules, "pymatting", None)
    with pytest.raises(MissingExtraError, match=r"clipseg\[refine\]"):
        alpha_matte(probabilities, image)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(MissingExtraError, match=r"clipseg\[refine\]"):
        refine(probabilities, image)


def test_a_refined_prediction_refines_every_map_and_what_derives_from_them() -> None:
    from predictor_fixtures import photo, tiny_model

    from clipseg.predictor import Predictor

    image = photo("coffee")  # 400x600
    predictor = Predictor(tiny_model())
    predictor.set_image(image)
    plain = predictor.predict(["a cup", "a spoon"], negative="a table")
    # The tiny random model's probabilities lie around 0.08-0.27 (median 0.24): 0.24 cuts through them.
    refined = plain.refined(image, threshold=0.24, radius=0.03)
    for index in range(2):
        # negatives applied before refining; the contrast step pivots on the threshold the masks are cut at
        expected = refine(plain.probability(index), image, radius=0.03, center=0.24)
        assert 0 < int((expected >= 0.24).sum()) < expected.numel()
        torch.testing.assert_close(refined.probability(index), expected)
        torch.testing.assert_close(refined.probabilities[index], expected)
    assert torch.equal(refined.masks(0.5), refined.probabilities > 0.5)
    assert torch.equal(refined.union_probability(), refined.probabilities.max(dim=0).values)
    best = refined.probabilities.argmax(dim=0) + 1
    expected_labels = torch.where(refined.probabilities.max(dim=0).values > 0.4, best, 0)
    assert torch.equal(refined.label_map(0.4), expected_labels)
    with pytest.raises(ValueError, match="unknown refine method"):
        plain.refined(image, method="crf")
    with pytest.raises(ValueError, match="unknown option 'radiu'"):
        plain.refined(image, radiu=3)
    with pytest.raises(ValueError, match="600x400 image"):
        plain.refined(image[:200])


def test_the_contrast_step_pivots_on_center() -> None:
    # A constant map stays constant under the guided filter, so only the contrast step acts, by hand:
    # 0.45 with sharpness 4 about 0.4 -> 0.6 -> 1.2 (clipped to 1) -> 1; about 0.5 -> 0.3 -> -0.3 (0) -> 0.
    image = np.full((40, 50, 3), 128, np.uint8)
    flat = np.full((40, 50), 0.45, np.float32)
    np.testing.assert_allclose(refine(flat, image, center=0.4), 1.0, atol=1e-5)
    np.testing.assert_allclose(refine(flat, image), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="option center must lie in"):
        refine(flat, image, center=1.5)


def test_each_prompt_is_refined_around_its_own_threshold_and_pickles() -> None:
    import pickle

    from clipseg.predictor import Prediction
    from clipseg.thresholds import Thresholds

    # logit(0.45) everywhere for both prompts: a mask at 0.4 keeps every pixel, a mask at 0.5 none, and
    # refinement must not flip that decision.
    logit = float(np.log(0.45 / 0.55))
    plain = Prediction(("a cup", "a spoon"), torch.full((2, 22, 22), logit), torch.zeros(0, 22, 22), (40, 50))
    image = np.full((40, 50, 3), 90, np.uint8)
    thresholds = Thresholds(overall=0.5, prompts={"a cup": 0.4})
    refined = plain.refined(image, threshold=thresholds)
    assert bool(refined.masks(thresholds)[0].all()) and not bool(refined.masks(thresholds)[1].any())
    torch.testing.assert_close(refined.probabilities, torch.stack([torch.ones(40, 50), torch.zeros(40, 50)]))
    # An explicit center wins over the thresholds.
    assert float(plain.refined(image, threshold=thresholds, center=0.5).probabilities.max()) < 1e-5
    # A refined prediction crosses process boundaries (the Ray engine ships them between workers).
    torch.testing.assert_close(pickle.loads(pickle.dumps(refined)).probabilities, refined.probabilities)
