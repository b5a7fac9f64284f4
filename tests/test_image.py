"""Image loading (every file a user may throw at the CLI) and the released model's preprocessing."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from predictor_fixtures import photo, save_jpeg

from clipseg.image import ImageLoadError, load_image, load_mask, preprocess, resize_mask
from clipseg.model.config import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return photo("coffee")[::4, ::4].copy()  # 100 x 150, enough to see orientation


def test_path_pil_and_array_give_the_same_rgb_image(tmp_path, coffee):
    path = tmp_path / "coffee.png"
    Image.fromarray(coffee).save(path)
    for source in (path, str(path), Image.fromarray(coffee), coffee):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (150, 100)
        np.testing.assert_array_equal(np.asarray(image), coffee)


@pytest.mark.parametrize(
    ("orientation", "transform"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # rotate 90 degrees clockwise for display
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path, coffee, orientation, transform):
    path = save_jpeg(coffee, tmp_path / "photo.jpg", orientation=orientation)
    plain = np.asarray(load_image(save_jpeg(coffee, tmp_path / "plain.jpg")), dtype=np.float32)
    image = np.asarray(load_image(path), dtype=np.float32)
    expected = transform(plain)
    assert image.shape == expected.shape
    assert np.abs(image - expected).mean() < 1.0  # the same JPEG data, only re-arranged


def test_grayscale_palette_and_bilevel_images_become_rgb(coffee):
    gray = Image.fromarray(coffee).convert("L")
    for image in (gray, gray.convert("1"), Image.fromarray(coffee).convert("P")):
        rgb = np.asarray(load_image(image))
        assert rgb.shape == (100, 150, 3)
        assert (rgb[..., 0] == rgb[..., 1]).all() or image.mode == "P"


def test_transparency_is_composited_onto_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red under full transparency must not leak through
    rgba[:2, :, 3] = 255
    image = np.asarray(load_image(Image.fromarray(rgba, mode="RGBA")))
    np.testing.assert_array_equal(image[:2], np.broadcast_to([200, 0, 0], (2, 4, 3)))
    np.testing.assert_array_equal(image[2:], np.full((2, 4, 3), 255))
    la = np.asarray(load_image(Image.fromarray(rgba[..., [0, 3]], mode="LA")))
    np.testing.assert_array_equal(la[2:], np.full((2, 4, 3), 255))


def test_palette_transparency_is_composited(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.info["transparency"] = 1
    path = tmp_path / "transparent.png"
    image.save(path, transparency=1)
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.full((4, 4, 3), 255))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image(path))
    np.testing.assert_array_equal(rgb[..., 0], np.round(values / 257.0).astype(np.uint8))


def test_float_and_sixteen_bit_arrays():
    ramp = np.linspace(0.0, 1.0, 12).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(load_image(ramp))[..., 1], np.round(ramp * 255).astype(np.uint8))
    deep = np.full((3, 4, 3), 65535, dtype=np.uint16)
    assert (np.asarray(load_image(deep)) == 255).all()
    assert np.asarray(load_image(np.ones((2, 2), dtype=bool))).min() == 255
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(np.full((2, 2), np.nan))
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((2, 2, 5), dtype=np.uint8))


def test_cmyk_jpeg_becomes_rgb(tmp_path, coffee):
    path = tmp_path / "print.jpg"
    Image.fromarray(coffee).convert("CMYK").save(path)
    assert Image.open(path).mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (150, 100)
    assert np.abs(np.asarray(image, dtype=np.float32) - coffee).mean() < 20


def _matrix_profile(red_xyz, green_xyz, blue_xyz) -> bytes:
    """A minimal ICC v2 RGB display profile (linear tone curves, D50 white) with the given primaries, built by
    hand from the ICC.1 specification so that what the pixels mean is known without any colour library."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(values) -> bytes:
        return b"XYZ " + bytes(4) + b"".join(s15(v) for v in values)

    linear = b"curv" + bytes(4) + struct.pack(">IH", 1, 256) + bytes(2)  # gamma 1.0 (u8Fixed8)
    text = b"swapped primaries\0"
    description = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    white = (0.9642, 1.0, 0.8249)
    tags = [(b"desc", description), (b"wtpt", xyz(white)), (b"rXYZ", xyz(red_xyz)), (b"gXYZ", xyz(green_xyz)),
            (b"bXYZ", xyz(blue_xyz)), (b"rTRC", linear), (b"gTRC", linear), (b"bTRC", linear)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + bytes([2, 0x10, 0, 0]) + b"mntr" + b"RGB " + b"XYZ "
              + bytes(12) + b"acsp" + bytes(4 * 4 + 8) + struct.pack(">I", 0) + b"".join(s15(v) for v in white)
              + bytes(4 + 16 + 28))
    return header + struct.pack(">I", len(tags)) + table + data


# sRGB's primaries adapted to D50 (IEC 61966-2-1 with the Bradford transform, as ICC profiles store them).
SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


def test_icc_profile_is_converted_to_srgb(tmp_path):
    """Pixels tagged with a profile whose red and blue primaries are sRGB's blue and red must come out swapped;
    an sRGB-tagged file keeps its values."""
    swapped = _matrix_profile(SRGB_BLUE, SRGB_GREEN, SRGB_RED)
    colours = np.array([[[255, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 255]]], dtype=np.uint8)
    path = tmp_path / "swapped.png"
    Image.fromarray(colours).save(path, icc_profile=swapped)
    expected = np.array([[[0, 0, 255], [255, 0, 0], [0, 255, 0], [255, 255, 255]]])
    assert np.abs(np.asarray(load_image(path), dtype=int) - expected).max() <= 3
    assert np.abs(np.asarray(load_image(Image.open(path)), dtype=int) - expected).max() <= 3
    srgb = tmp_path / "srgb.png"
    Image.fromarray(colours).save(srgb, icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    np.testing.assert_array_equal(np.asarray(load_image(srgb)), colours)


def test_unreadable_icc_profile_is_ignored_with_a_warning(tmp_path, coffee):
    path = tmp_path / "broken.png"
    Image.fromarray(coffee).save(path, icc_profile=b"not a profile at all")
    with pytest.warns(UserWarning, match="broken.png: unreadable ICC colour profile ignored"):
        image = load_image(path)
    np.testing.assert_array_equal(np.asarray(image), coffee)


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    assert load_image(path).size == (1, 1)
    pixels = preprocess(load_image(path), 352, IMAGENET_MEAN, IMAGENET_STD)
    assert pixels.shape == (3, 352, 352) and torch.isfinite(pixels).all()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg: no such file"):
        load_image(tmp_path / "nope.jpg")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty.jpg: empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels\n")
    with pytest.raises(ImageLoadError, match="notes.jpg: not an image file"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path, coffee):
    data = save_jpeg(photo("coffee"), tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpg: truncated or corrupt image") as error:
        load_image(tmp_path / "cut.jpg")
    assert "\n" not in str(error.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("side", [40, 100])  # between 1x and 2x Pillow's limit (a warning in Pillow), and above 2x
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "bomb.png"
    Image.new("RGB", (side, side)).save(path)
    with pytest.raises(
        ImageLoadError, match="bomb.png: image larger than Pillow's decompression-bomb limit of 1,000 pixels"
    ):
        load_image(path)


def test_preprocess_matches_the_hub_processor():
    """The hub checkpoints ship a ViTImageProcessor: PIL bilinear resize of the uint8 image, /255, mean/std."""
    transformers = pytest.importorskip("transformers")
    processor = transformers.ViTImageProcessor(
        do_resize=True,
        size={"height": 352, "width": 352},
        resample=Image.Resampling.BILINEAR,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    image = load_image(photo("chelsea"))
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = preprocess(image, 352, IMAGENET_MEAN, IMAGENET_STD)
    assert ours.shape == (3, 352, 352)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_preprocess_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        preprocess(Image.new("L", (4, 4)), 32, IMAGENET_MEAN, IMAGENET_STD)


def test_masks_from_files_arrays_and_alpha(tmp_path):
    values = np.zeros((6, 8), dtype=np.uint8)
    values[1:3, 2:5] = 255
    Image.fromarray(values).save(tmp_path / "mask.png")
    expected = values > 0
    np.testing.assert_array_equal(load_mask(tmp_path / "mask.png"), expected)
    np.testing.assert_array_equal(load_mask((values > 0).astype(np.uint8)), expected)  # 0/1 masks
    np.testing.assert_array_equal(load_mask(values.astype(np.float32) / 255), expected)
    np.testing.assert_array_equal(load_mask(torch.from_numpy(expected)), expected)
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 3] = values
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "cutout.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "cutout.png"), expected)
    voc = Image.fromarray((values > 0).astype(np.uint8) * 8, mode="P")  # class 8 (cat) is dark red (64, 0, 0)
    voc.putpalette([0, 0, 0] * 8 + [64, 0, 0] + [0] * (768 - 27))
    np.testing.assert_array_equal(load_mask(voc), expected)
    with pytest.raises(ValueError, match="2-D"):
        load_mask(np.zeros((2, 2, 2, 2)))


def test_resize_mask_keeps_tiny_objects():
    mask = np.zeros((1000, 1000), dtype=bool)
    mask[500, 500] = True
    coverage = resize_mask(mask, 352)
    assert coverage.shape == (352, 352) and coverage.dtype == np.float32
    assert 0 < coverage.max() <= 1
