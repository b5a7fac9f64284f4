"""Output writers: binary / soft mask PNGs, heatmap and mask overlays, RGBA cut-outs, COCO RLE JSON, label maps.

Every file is written atomically (`clipseg.fileio`), so an interrupted run never leaves a partial output under a
real name. File names derived from image names and prompts go through `safe_name` (no path separators, no "..",
bounded length).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

from .fileio import atomic_write, write_text
from .messages import shorten

# Bytes (UTF-8) of one name component: image stem and prompt each; the whole name stays far below 255 bytes.
MAX_NAME_BYTES = 80
JPEG_QUALITY = 92
JPEG_MAX_SIDE = 65535  # the JPEG format's limit
OVERLAY_ALPHA = 0.5
# Perceptually ordered colour stops (dark purple -> yellow) interpolated into a 256-entry heatmap table.
_HEATMAP_STOPS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
# Distinct colours for prompts (label 1, 2, ...); label 0 (background) is black.
_LABEL_COLOURS = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
]
_RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_name(text: str, *, max_bytes: int = MAX_NAME_BYTES, fallback: str = "prompt", keep_dots: bool = True) -> str:
    """A file-name component for `text`: NFKC-normalised, whitespace -> "_", every character other than letters,
    digits, "_", "-" and (with `keep_dots`) "." -> "-", no leading/trailing dots, no "..", at most `max_bytes`
    UTF-8 bytes (a hash of the full text is appended when it had to be shortened), never empty and never a
    reserved Windows device name."""
    name = unicodedata.normalize("NFKC", text)
    name = re.sub(r"\s+", "_", name.strip())
    name = re.sub(r"[^\w.-]+" if keep_dots else r"[^\w-]+", "-", name)
    name = re.sub(r"\.{2,}", ".", name)
    name = re.sub(r"-{2,}", "-", name).strip(".-_") or fallback
    if len(name.encode("utf-8")) > max_bytes:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        head = name.encode("utf-8")[: max_bytes - len(digest) - 1].decode("utf-8", errors="ignore").rstrip(".-_")
        name = f"{head}-{digest}"
    if name.split(".")[0].upper() in _RESERVED_NAMES:
        name = f"{name}_"
    return name


def unique_names(texts: Sequence[str], **kwargs: Any) -> list[str]:
    """`safe_name` of each text; texts whose names collide get a hash of the text appended, so distinct texts
    always get distinct names (deterministically)."""
    names = [safe_name(text, **kwargs) for text in texts]
    counts: dict[str, int] = {}
    for name in names:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1  # case-insensitive file systems
    return [
        f"{name}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}" if counts[name.lower()] > 1 else name
        for name, text in zip(names, texts, strict=True)
    ]


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Atomically save a PIL image; the format follows the suffix (`encoded_image`)."""
    data = encoded_image(image, path)
    with atomic_write(path) as file:
        file.write(data)
    return Path(path)


def encoded_image(image: Image.Image, path: str | os.PathLike) -> bytes:
    """The bytes of `image` as saved at `path`: PNG, or JPEG at quality 92, by the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return png_bytes(image)
    if suffix not in (".jpg", ".jpeg"):
        raise ValueError(f"{path}: unsupported output suffix {suffix!r} (use .png or .jpg)")
    if max(image.size) > JPEG_MAX_SIDE:
        raise ValueError(
            f"{path}: a JPEG holds at most {JPEG_MAX_SIDE:,} pixels per side and this image is "
            f"{image.width:,}x{image.height:,}; use a PNG output (mask, soft, cutout) for it"
        )
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_png(image: Image.Image, file: BinaryIO) -> None:
    """The one PNG encoding of every output (files and server answers alike, so both are byte-identical)."""
    image.save(file, format="PNG")


def png_bytes(image: Image.Image) -> bytes:
    """`image` encoded as `write_png` writes it."""
    buffer = io.BytesIO()
    write_png(image, buffer)
    return buffer.getvalue()


def save_json(data: Any, path: str | os.PathLike) -> Path:
    """Atomically write `data` as UTF-8 JSON (`json_bytes`)."""
    write_text(path, json_bytes(data).decode("utf-8"))
    return Path(path)


def json_bytes(data: Any) -> bytes:
    """`data` as the UTF-8 JSON of every JSON output (indented, non-ASCII kept, final newline)."""
    return (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def mask_image(mask: np.ndarray) -> Image.Image:
    """A bool mask -> 8-bit grayscale image 0/255; a float mask/probability map in [0, 1] -> 0..255 (rounded)."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return Image.fromarray(np.round(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")


def heatmap_colours(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities (H, W) in [0, 1] -> uint8 RGB (H, W, 3) through a dark-purple-to-yellow colour table."""
    positions = np.linspace(0.0, 1.0, len(_HEATMAP_STOPS))
    table_index = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(table_index, positions, _HEATMAP_STOPS[:, c]) for c in range(3)], axis=1)
    table = np.round(table).astype(np.uint8)
    indices = np.round(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)
    return table[indices]


def heatmap_overlay(image: Image.Image, probabilities: np.ndarray, *, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The photo blended with the heatmap colours of `probabilities` (same size)."""
    _check_size(image, probabilities)
    colours = Image.fromarray(heatmap_colours(probabilities), mode="RGB")
    return Image.blend(image.convert("RGB"), colours, alpha)


def mask_overlay(
    image: Image.Image,
    mask: np.ndarray,
    *,
    colour: tuple[int, int, int] = _LABEL_COLOURS[0],
    alpha: float = OVERLAY_ALPHA,
) -> Image.Image:
    """The photo with the mask filled in `colour` at `alpha` and its outline drawn opaque. A soft mask in [0, 1]
    sets the fill's opacity per pixel; its outline is drawn at 0.5."""
    _check_size(image, mask)
    coverage = np.asarray(mask, dtype=np.float32)
    binary = ((coverage >= 0.5) * 255).astype(np.uint8)
    thickness = max(1, round(max(image.size) / 400))
    # Outline = the mask grown by `thickness` (a square max filter, separable, so any size works even on a
    # 1 x 20,000,000 image, where Pillow's MaxFilter refuses the size) minus the mask itself.
    from scipy import ndimage

    # A window wider than the image along an axis is the whole axis (mode "nearest"): clip it, or scipy pads
    # every 1-pixel column of a very wide image to the full window.
    window = tuple(2 * min(thickness, length - 1) + 1 for length in binary.shape)
    grown = ndimage.maximum_filter(binary, size=window, mode="nearest")
    outline = Image.fromarray(grown - binary, mode="L")
    fill = mask_image(np.clip(coverage, 0.0, 1.0) * alpha)
    weight = ImageChops.lighter(fill, outline)
    return Image.composite(Image.new("RGB", image.size, colour), image.convert("RGB"), weight)


def cutout(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """RGBA image: the photo with the mask (bool, or soft in [0, 1]) as alpha channel."""
    _check_size(image, mask)
    rgba = image.convert("RGB").copy()
    rgba.putalpha(mask_image(mask))
    return rgba


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding of a bool (H, W) mask: {"size": [H, W], "counts": str} (pycocotools)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_annotation(mask: np.ndarray, probabilities: np.ndarray, *, prompt: str, threshold: float) -> dict[str, Any]:
    """One prompt's COCO-style entry: RLE segmentation, area, bbox [x, y, width, height], and score (the mean
    probability inside the mask, 0 for an empty mask)."""
    from pycocotools import mask as coco_mask

    rle = encode_rle(mask)
    native = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    area = int(coco_mask.area(native))
    score = float(np.asarray(probabilities)[mask].mean()) if area else 0.0
    return {
        "prompt": prompt,
        "threshold": threshold,
        "segmentation": rle,
        "area": area,
        "bbox": [float(v) for v in coco_mask.toBbox(native)],
        "score": round(score, 6),
    }


def label_colours(count: int) -> list[tuple[int, int, int]]:
    """Colours of labels 0..count: black for background, then distinct colours (cycled after 20)."""
    return [(0, 0, 0), *(_LABEL_COLOURS[i % len(_LABEL_COLOURS)] for i in range(count))]


def label_image(labels: np.ndarray, count: int) -> Image.Image:
    """A label map (H, W) with values 0..count -> palette PNG image whose pixel values are the labels."""
    labels = np.asarray(labels)
    if count > 255:
        raise ValueError(f"a palette label image holds at most 255 prompts, got {count}")
    image = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
    palette = [channel for colour in label_colours(count) for channel in colour]
    image.putpalette(palette + [0] * (768 - len(palette)))
    return image


def label_overlay(
    image: Image.Image, labels: np.ndarray, names: Sequence[str], *, alpha: float = OVERLAY_ALPHA
) -> Image.Image:
    """The photo with each label's pixels tinted in its colour (background untouched) and a legend in the top-left
    corner listing the colours and prompts that occur."""
    _check_size(image, labels)
    labels = np.asarray(labels)
    colours = np.asarray(label_colours(len(names)), dtype=np.uint8)
    tint = Image.fromarray(colours[labels], mode="RGB")
    weight = Image.fromarray(np.where(labels > 0, round(alpha * 255), 0).astype(np.uint8), mode="L")
    result = Image.composite(tint, image.convert("RGB"), weight)
    present = [index for index in range(1, len(names) + 1) if (labels == index).any()]
    return draw_legend(result, [(names[i - 1], label_colours(len(names))[i]) for i in present])


def draw_legend(image: Image.Image, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """Draw a legend box (colour swatch + text per entry) into the top-left corner of a copy of `image`."""
    if not entries:
        return image
    font_size = max(10, round(min(image.size) / 30))
    font = ImageFont.load_default(size=font_size)
    result = image.copy()
    draw = ImageDraw.Draw(result)
    pad, swatch = font_size // 2, font_size
    texts = [shorten(name, 40) for name, _ in entries]
    width = pad * 3 + swatch + max(draw.textbbox((0, 0), text, font=font)[2] for text in texts)
    height = pad + len(entries) * (swatch + pad)
    draw.rectangle((0, 0, width, height), fill=(255, 255, 255))
    for row, (text, (_, colour)) in enumerate(zip(texts, entries, strict=True)):
        top = pad + row * (swatch + pad)
        draw.rectangle((pad, top, pad + swatch, top + swatch), fill=colour, outline=(0, 0, 0))
        draw.text((pad * 2 + swatch, top), text, fill=(0, 0, 0), font=font)
    return result


def _check_size(image: Image.Image, array: np.ndarray) -> None:
    if np.shape(array)[:2] != (image.height, image.width):
        raise ValueError(f"mask of shape {np.shape(array)} does not match the {image.width}x{image.height} image")
