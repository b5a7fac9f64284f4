"""Issue 11, images: extreme aspect ratios in bounded memory, multi-frame files said so, special files refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipseg
from clipseg.image import ImageLoadError, load_image
from clipseg.outputs import mask_overlay, save_image
from clipseg.prediction import upsample_logits

SRC = Path(clipseg.__file__).resolve().parents[1]


@pytest.mark.parametrize("size", [(5, 301), (301, 5), (40, 50), (3, 2), (17, 23)])
def test_two_pass_upsample_equals_torch_one_call(size):
    logits = torch.randn(2, 17, 23, generator=torch.Generator().manual_seed(0))
    shrinking = size[0] < 17 or size[1] < 23
    expected = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    torch.testing.assert_close(upsample_logits(logits, size), expected[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 5_000_000), (5_000_000, 1)], ids=["wide", "tall"])
def test_full_size_probabilities_of_extreme_aspect_ratio_fit_in_bounded_memory(shape):
    # A one-call resize of 352x352 logits to 1 x 5,000,000 builds a 352 x 5,000,000 float intermediate (7 GB).
    code = f"""
        import resource
        import torch
        from clipseg.predictor import Prediction
        resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))
        logits = torch.zeros(1, 352, 352)
        # Half of the long axis at logit 4: the short axis is averaged away, the long one keeps both values.
        if {shape}[0] > 1:
            logits[0, :176, :] = 4.0
        else:
            logits[0, :, :176] = 4.0
        prediction = Prediction(("a",), logits, torch.zeros(0, 352, 352), {shape})
        probability = prediction.probabilities[0]
        print(tuple(probability.shape), round(float(probability.max()), 4), round(float(probability.min()), 4))
    """
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=environment
    )
    assert result.returncode == 0, result.stderr
    # sigmoid(4) = 0.9820 on one half, sigmoid(0) = 0.5 on the other (hand computation).
    assert result.stdout.split() == [f"({shape[0]},", f"{shape[1]})", "0.982", "0.5"]


def test_overlay_outline_on_a_five_million_pixel_wide_image():
    width = 5_000_000
    image = Image.new("RGB", (width, 1), (0, 0, 0))
    mask = np.zeros((1, width), dtype=bool)
    mask[0, 100_000:100_010] = True
    overlay = np.asarray(mask_overlay(image, mask, colour=(255, 0, 0)))[0, :, 0]
    thickness = round(width / 400)  # 12,500 px: Pillow's MaxFilter refuses a 25,001 px window
    # Inside the mask: half-transparent fill (0.5 * 255 = 127.5 -> 128); the outline band: opaque; beyond: photo.
    assert (overlay[100_000:100_010] == 128).all()
    assert (overlay[100_000 - thickness : 100_000] == 255).all()
    assert (overlay[100_010 : 100_010 + thickness] == 255).all()
    assert overlay[100_000 - thickness - 1] == 0 and overlay[100_010 + thickness] == 0


def test_jpeg_output_wider_than_the_format_allows_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"a JPEG holds at most 65,535 pixels per side.*70,000x1"):
        save_image(Image.new("RGB", (70_000, 1)), tmp_path / "x.overlay.jpg")
    assert not any(tmp_path.iterdir())


def test_animated_gif_and_multi_page_tiff_say_only_the_first_frame_is_used(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "b.tiff", save_all=True, append_images=frames[1:2])
    with pytest.warns(UserWarning, match=r"a\.gif: GIF image with 3 frames; only the first is used"):
        first = load_image(tmp_path / "a.gif")
    assert np.asarray(first)[0, 0].tolist() == [255, 0, 0]
    with pytest.warns(UserWarning, match=r"b\.tiff: TIFF image with 2 pages; only the first is used"):
        load_image(tmp_path / "b.tiff")
    frames[0].save(tmp_path / "single.gif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(tmp_path / "single.gif")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifo_as_image_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "photo.png")
    with pytest.raises(ImageLoadError, match=r"photo\.png: not a regular file"):
        load_image(tmp_path / "photo.png")


def test_preprocess_of_a_five_million_pixel_tall_image_fits_in_bounded_memory():
    # Pillow's one-call resize keeps every input row through its width pass: 352 x 5,000,000 RGBA (7 GB).
    code = """
        import resource
        import numpy as np
        from PIL import Image
        from clipseg.image import preprocess
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))
        pixels = np.full((5_000_000, 1, 3), 200, np.uint8)
        pixels[:2_500_000] = 100
        tensor = preprocess(Image.fromarray(pixels), 352, (0, 0, 0), (1, 1, 1))
        print(tuple(tensor.shape), round(float(tensor.max()) * 255), round(float(tensor.min()) * 255))
    """
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=environment
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(3,", "352,", "352)", "200", "100"]  # bottom half 200, top half 100


def test_ordinary_resizes_are_pillows_one_call():
    from clipseg.image import bounded_resize

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8))
    for size in [(352, 352), (100, 80), (1000, 20)]:
        expected = image.resize(size, Image.Resampling.BILINEAR)
        assert np.array_equal(np.asarray(bounded_resize(image, size)), np.asarray(expected))
