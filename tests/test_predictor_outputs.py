"""Mask post-processing, output writers, atomic writes and file-name sanitising."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from clipseg import outputs
from clipseg.postprocess import MaskOptions, dilate, erode, feather, invert, remove_small_components, threshold


def disk(radius: float, size: int = 41) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    return x**2 + y**2 <= radius**2


def test_threshold_is_strict_and_checked():
    # p > t: the original CLIPSeg's metrics.py counts a pixel as foreground at t when `p > thresh`.
    probabilities = np.array([[0.39, 0.4, 0.41, 0.9]])
    np.testing.assert_array_equal(threshold(probabilities, 0.4), [[False, False, True, True]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold(probabilities, 1.5)


def test_dilate_and_erode_are_euclidean_disks():
    dot = np.zeros((41, 41), dtype=bool)
    dot[20, 20] = True
    np.testing.assert_array_equal(dilate(dot, 5), disk(5))
    eroded = erode(disk(10), 4)
    assert (disk(5) <= eroded).all() and (eroded <= disk(7)).all() and eroded.sum() < disk(7).sum()
    grown = dilate(disk(6), 2)
    assert (disk(7) <= grown).all() and (grown <= disk(8.5)).all()
    # The image border is not background: a full mask stays full.
    assert erode(np.ones((5, 5), dtype=bool), 2).all()
    assert dilate(np.zeros((5, 5), dtype=bool), 3).sum() == 0
    with pytest.raises(ValueError, match=">= 0"):
        dilate(dot, -1)


def test_remove_small_components_uses_8_connectivity():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one component of 2
    mask[5:8, 5:8] = True  # 9 pixels
    mask[0, 9] = True  # 1 pixel
    kept = remove_small_components(mask, 2)
    assert kept[0, 0] and kept[1, 1] and kept[6, 6] and not kept[0, 9]
    assert remove_small_components(mask, 10).sum() == 0


def test_invert_and_feather():
    mask = disk(8)
    np.testing.assert_array_equal(invert(mask), ~mask)
    np.testing.assert_allclose(invert(np.array([[0.25]])), [[0.75]])
    soft = feather(mask, 2.0)
    assert soft.dtype == np.float32 and soft.min() >= 0 and soft.max() <= 1
    assert soft[20, 20] > 0.99 and soft[0, 0] < 0.01 and 0.2 < soft[20, 28] < 0.8  # the edge is soft


def test_mask_options_order():
    probabilities = np.zeros((41, 41))
    probabilities[disk(6)] = 0.9
    probabilities[0, 0] = 0.9  # speck
    options = MaskOptions(threshold=0.5, min_area=5, dilate=2, invert=True)
    result = options.apply(probabilities)
    np.testing.assert_array_equal(result, ~dilate(disk(6), 2))
    assert result[0, 0]  # the speck was removed before dilation, then inverted
    assert MaskOptions(feather=1.5).apply(probabilities).dtype == np.float32
    with pytest.raises(ValueError, match="min_area"):
        MaskOptions(min_area=-1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cup", "a_cup"),
        ("../../etc/passwd", "etc-passwd"),
        ("something to sit on / lie on", "something_to_sit_on_-_lie_on"),
        ("", "prompt"),
        ("...", "prompt"),
        ("CON", "CON_"),
        ("猫", "猫"),
        ("ｆｕｌｌｗｉｄｔｈ", "fullwidth"),
    ],
)
def test_safe_name(text, expected):
    assert outputs.safe_name(text) == expected


def test_safe_name_bounds_length_and_keeps_long_prompts_apart():
    first, second = "a " * 1000 + "cup", "a " * 1000 + "mug"
    names = [outputs.safe_name(first), outputs.safe_name(second), outputs.safe_name("猫" * 200)]
    assert all(len(name.encode()) <= outputs.MAX_NAME_BYTES for name in names)
    assert names[0] != names[1]
    assert outputs.safe_name("a.b", keep_dots=False) == "a-b"
    assert ".." not in outputs.safe_name("a..b")
    assert outputs.unique_names(["a cup", "a-cup", "A cup", "a mug"])[3] == "a_mug"
    assert len(set(outputs.unique_names(["a cup", "a_cup", "A cup"]))) == 3


@pytest.fixture
def photo_and_mask():
    image = Image.fromarray(np.full((30, 40, 3), 100, dtype=np.uint8))
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:20, 10:30] = True
    return image, mask


def test_image_writers(tmp_path, photo_and_mask):
    image, mask = photo_and_mask
    outputs.save_image(outputs.mask_image(mask), tmp_path / "mask.png")
    saved = np.asarray(Image.open(tmp_path / "mask.png"))
    assert saved.dtype == np.uint8 and set(np.unique(saved)) == {0, 255}
    np.testing.assert_array_equal(saved > 0, mask)
    soft = np.linspace(0, 1, 30 * 40).reshape(30, 40)
    np.testing.assert_array_equal(np.asarray(outputs.mask_image(soft)), np.round(soft * 255).astype(np.uint8))
    heat = outputs.heatmap_overlay(image, soft)
    assert heat.size == image.size and heat.mode == "RGB"
    overlay = np.asarray(outputs.mask_overlay(image, mask, colour=(255, 0, 0)))
    assert overlay[12, 20, 0] > 150 and tuple(overlay[0, 0]) == (100, 100, 100)
    rgba = outputs.cutout(image, mask)
    assert rgba.mode == "RGBA" and np.asarray(rgba)[12, 20, 3] == 255 and np.asarray(rgba)[0, 0, 3] == 0
    outputs.save_image(heat, tmp_path / "heat.jpg")
    assert Image.open(tmp_path / "heat.jpg").format == "JPEG"
    with pytest.raises(ValueError, match="does not match"):
        outputs.cutout(image, mask[:10])
    with pytest.raises(ValueError, match="unsupported output suffix"):
        outputs.save_image(heat, tmp_path / "heat.gif")


def test_rle_round_trips_through_pycocotools(tmp_path, photo_and_mask):
    _, mask = photo_and_mask
    probabilities = np.where(mask, 0.8, 0.1)
    entry = outputs.rle_annotation(mask, probabilities, prompt="a cup", threshold=0.4)
    outputs.save_json(entry, tmp_path / "entry.json")
    loaded = json.loads((tmp_path / "entry.json").read_text())
    decoded = coco_mask.decode(
        {"size": loaded["segmentation"]["size"], "counts": loaded["segmentation"]["counts"].encode()}
    )
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    assert loaded["area"] == mask.sum() and loaded["bbox"] == [10.0, 5.0, 20.0, 15.0]
    assert loaded["score"] == pytest.approx(0.8)
    assert outputs.rle_annotation(np.zeros_like(mask), probabilities, prompt="x", threshold=0.4)["score"] == 0.0


def test_label_image_and_overlay(photo_and_mask):
    image, mask = photo_and_mask
    labels = mask.astype(np.int64) * 2
    label_png = outputs.label_image(labels, 2)
    assert label_png.mode == "P"
    np.testing.assert_array_equal(np.asarray(label_png), labels)
    assert label_png.getpalette()[6:9] == list(outputs.label_colours(2)[2])
    overlay = outputs.label_overlay(image, labels, ["cat", "dog"])
    assert overlay.size == image.size
    with pytest.raises(ValueError, match="255"):
        outputs.label_image(labels, 300)
