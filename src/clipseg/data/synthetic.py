"""Synthetic scenes of coloured shapes, and writers that store them in the official dataset formats.

No real dataset can be downloaded in tests or CI, so the readers are exercised end to end on small synthetic
datasets written here in the same on-disk layouts (PhraseCut, COCO instances JSON, the own-data folder layout).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

from ..fileio import atomic_path, write_text

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
_CIRCLE_VERTICES = 32
_PLACEMENT_TRIES = 50


@dataclass(frozen=True)
class Shape:
    """One object of a synthetic scene.

    `polygon` holds one flat ``[x0, y0, x1, y1, ...]`` list per polygon (pixel coordinates, the COCO/PhraseCut
    convention) and `mask` is exactly that polygon rasterised, so readers can be checked against it.
    """

    kind: str
    colour: str
    mask: np.ndarray
    polygon: list[list[float]]
    location: str

    @property
    def phrase(self) -> str:
        """The referring phrase naming this shape, e.g. ``"red circle"``."""
        return f"{self.colour} {self.kind}"

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box ``(x, y, width, height)`` of the polygon in COCO convention."""
        xs = [x for poly in self.polygon for x in poly[0::2]]
        ys = [y for poly in self.polygon for y in poly[1::2]]
        return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


@dataclass(frozen=True)
class Scene:
    """A rendered RGB image and the shapes drawn on it (non-overlapping, so every mask is fully visible)."""

    image: Image.Image
    shapes: list[Shape]


def rasterize_polygons(polygons: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    """Rasterise flat ``[x0, y0, x1, y1, ...]`` polygons into a bool mask of `size` = (H, W) (union of all)."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) < 6 or len(polygon) % 2:
            raise ValueError(f"a polygon needs at least 3 [x, y] points as a flat list, got {len(polygon)} numbers")
        draw.polygon([(float(x), float(y)) for x, y in zip(polygon[0::2], polygon[1::2])], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _shape_outline(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a shape centred at (cx, cy) whose circumscribed circle has `radius`."""
    if kind == "circle":
        theta = np.linspace(0.0, 2.0 * math.pi, _CIRCLE_VERTICES, endpoint=False)
    elif kind == "square":
        theta = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi + angle
    elif kind == "triangle":
        theta = np.array([-0.5, 1.0 / 6.0, 5.0 / 6.0]) * math.pi + angle
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")
    return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)


def _textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted low-frequency colour noise, so that shapes are not found by a trivial colour threshold alone."""
    coarse = rng.uniform(70, 170, size=(4, 4, 3)).astype(np.uint8)
    smooth = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
    smooth = smooth.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(height, width) / 32)))
    return np.asarray(smooth, dtype=np.float32)


def _location_word(cx: float, width: int) -> str:
    if cx < width / 3:
        return "left"
    if cx > 2 * width / 3:
        return "right"
    return "middle"


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 96),
    n_shapes: tuple[int, int] = (1, 3),
    kinds: tuple[str, ...] = SHAPE_KINDS,
    colours: tuple[str, ...] = tuple(COLOURS),
    radius: tuple[float, float] = (0.12, 0.25),
) -> Scene:
    """Render a textured background with between ``n_shapes[0]`` and ``n_shapes[1]`` (inclusive) shapes, each of
    a radius drawn uniformly from `radius` (fractions of the shorter side).

    Shapes never overlap (placement is retried, and a shape that does not fit is left out, so at least one shape
    is always present). The result depends only on the state of `rng`.
    """
    height, width = size
    low, high = n_shapes
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16, got {size}")
    if not 1 <= low <= high:
        raise ValueError(f"n_shapes must be (low, high) with 1 <= low <= high, got {n_shapes}")
    unknown = [c for c in colours if c not in COLOURS]
    if unknown:
        raise ValueError(f"unknown colours {unknown}; expected names from {list(COLOURS)}")
    if not 0 < radius[0] <= radius[1] <= 0.5:
        raise ValueError(f"radius must be (low, high) fractions of the shorter side with 0 < low <= high <= 0.5, got {radius}")

    pixels = _textured_background(rng, height, width)
    occupied = np.zeros((height, width), dtype=bool)
    shapes: list[Shape] = []
    short_side = min(height, width)
    for _ in range(int(rng.integers(low, high + 1))):
        kind = str(rng.choice(kinds))
        colour = str(rng.choice(colours))
        for _ in range(_PLACEMENT_TRIES):
            shape_radius = float(rng.uniform(*radius) * short_side)
            cx = float(rng.uniform(shape_radius, width - shape_radius))
            cy = float(rng.uniform(shape_radius, height - shape_radius))
            angle = float(rng.uniform(-math.pi / 9, math.pi / 9))
            # Whole-pixel vertices: PIL and truncating rasterisers agree; pixel-centre ones (PhraseCut as released)
            # differ only on the outline.
            vertices = np.round(_shape_outline(kind, cx, cy, shape_radius, angle))
            polygon = [float(v) for v in vertices.reshape(-1)]
            mask = rasterize_polygons([polygon], size)
            if mask.any() and not (mask & occupied).any():
                break
        else:
            continue
        # Grow the occupied area by a 2-pixel margin so that neighbouring shapes never touch.
        occupied |= np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(5)), dtype=bool)
        shade = np.asarray(COLOURS[colour], dtype=np.float32) * rng.uniform(0.85, 1.0)
        pixels[mask] = shade
        shapes.append(Shape(kind, colour, mask, [polygon], _location_word(cx, width)))

    pixels += rng.normal(0.0, 4.0, size=pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return Scene(image=image, shapes=shapes)


def _save_image(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as temporary:
        image.save(temporary, format="JPEG" if path.suffix.lower() in {".jpg", ".jpeg"} else "PNG", quality=95)


def _save_json(data: Any, path: Path) -> None:
    write_text(path, json.dumps(data))


def _scenes(n_images: int, seed: int, size: tuple[int, int]) -> Iterator[Scene]:
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    rng = np.random.default_rng(seed)
    for _ in range(n_images):
        yield render_scene(rng, size=size, n_shapes=(1, 4))


def _location_phrase(shape: Shape) -> str:
    where = "in the middle" if shape.location == "middle" else f"on the {shape.location}"
    return f"{shape.phrase} {where}"


def _groups_by_phrase(shapes: Sequence[Shape]) -> dict[str, list[Shape]]:
    groups: dict[str, list[Shape]] = {}
    for shape in shapes:
        groups.setdefault(shape.phrase, []).append(shape)
    return groups


def write_phrasecut(
    out_dir: str | os.PathLike,
    n_images: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (96, 128),
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Path:
    """Write a synthetic dataset in the official PhraseCut layout and return its ``VGPhraseCut_v0`` directory.

    Every image gets one task per distinct phrase (``"red circle"``, all instances of it) and, where a phrase
    has several instances in different places, one task per instance with its location (``"red circle on the
    left"``). Images are split into train/val/test by `split_fractions`.
    """
    root = Path(out_dir) / "VGPhraseCut_v0"
    (root / "images").mkdir(parents=True, exist_ok=True)
    splits = ("train", "val", "test")
    boundaries = np.cumsum(np.asarray(split_fractions, dtype=float) / sum(split_fractions)) * n_images
    tasks: dict[str, list[dict[str, Any]]] = {split: [] for split in splits}
    image_info: list[dict[str, Any]] = []
    next_ann_id = 1
    for index, scene in enumerate(_scenes(n_images, seed, size)):
        image_id = index + 1
        split = splits[int(np.searchsorted(boundaries, index, side="right"))]
        _save_image(scene.image, root / "images" / f"{image_id}.jpg")
        image_info.append({"image_id": image_id, "width": size[1], "height": size[0], "split": split,
                           "coco_id": None, "flickr_id": None, "url": None})
        ann_ids = {id(shape): next_ann_id + k for k, shape in enumerate(scene.shapes)}
        next_ann_id += len(scene.shapes)
        referrals: list[tuple[str, list[Shape], str]] = []
        for phrase, group in _groups_by_phrase(scene.shapes).items():
            referrals.append((phrase, group, "attribute"))
            locations = [shape.location for shape in group]
            if len(group) > 1:
                referrals += [(_location_phrase(s), [s], "relation") for s in group if locations.count(s.location) == 1]
        for phrase, group, phrase_type in referrals:
            ids = [ann_ids[id(shape)] for shape in group]
            tasks[split].append({
                "task_id": f"{image_id}__{'_'.join(map(str, ids))}",
                "image_id": image_id,
                "ann_ids": ids,
                "instance_boxes": [list(shape.bbox) for shape in group],
                "Polygons": [[np.reshape(poly, (-1, 2)).tolist() for poly in shape.polygon] for shape in group],
                "phrase": phrase,
                "phrase_structure": {"name": group[0].kind, "attributes": [group[0].colour],
                                     "relation_ids": [], "relation_descriptions": [], "type": phrase_type},
            })
    for split in splits:
        _save_json(tasks[split], root / f"refer_{split}.json")
    _save_json(image_info, root / "image_data_split.json")
    return root


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def write_coco(
    out_dir: str | os.PathLike,
    n_images: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (96, 128),
) -> Path:
    """Write a synthetic COCO instances dataset (``images/`` + ``annotations.json``); return the JSON path.

    Categories are the shape phrases (``"red circle"``). Segmentations cycle through the three COCO encodings:
    polygons, compressed RLE and uncompressed RLE (the latter marked ``iscrowd`` as COCO does).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = [f"{colour} {kind}" for colour in COLOURS for kind in SHAPE_KINDS]
    category_ids = {name: k + 1 for k, name in enumerate(names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, scene in enumerate(_scenes(n_images, seed, size)):
        image_id = index + 1
        file_name = f"{image_id:06d}.jpg"
        _save_image(scene.image, out / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": size[0], "width": size[1]})
        for shape in scene.shapes:
            kind = len(annotations) % 3
            if kind == 0:
                segmentation: Any = shape.polygon
            elif kind == 1:
                encoded = mask_utils.encode(np.asfortranarray(shape.mask.astype(np.uint8)))
                segmentation = {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
            else:
                segmentation = _uncompressed_rle(shape.mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[shape.phrase],
                "segmentation": segmentation, "area": float(shape.mask.sum()), "bbox": list(shape.bbox),
                "iscrowd": int(kind == 2),
            })
    categories = [{"id": category_ids[name], "name": name, "supercategory": name.split()[1]} for name in names]
    path = out / "annotations.json"
    _save_json({"images": images, "annotations": annotations, "categories": categories}, path)
    return path


def write_folder(
    out_dir: str | os.PathLike,
    n_images: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (96, 128),
    as_csv: bool = False,
) -> Path:
    """Write a synthetic own-data folder (see `clipseg.data.folder`) and return its root (or the CSV file).

    Without `as_csv`: ``images/<name>.jpg`` and ``masks/<name>__<prompt>.png`` (prompt in the file name).
    With `as_csv`: ``images/``, ``masks/<name>_<k>.png`` and ``annotations.csv`` with columns image, mask, prompt.
    Prompts read ``"the red circle"``; one mask per distinct phrase of an image (the union of its instances).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    for index, scene in enumerate(_scenes(n_images, seed, size)):
        name = f"scene_{index:05d}"
        _save_image(scene.image, out / "images" / f"{name}.jpg")
        for k, (phrase, group) in enumerate(_groups_by_phrase(scene.shapes).items()):
            prompt = f"the {phrase}"
            union = np.logical_or.reduce([shape.mask for shape in group])
            mask_name = f"{name}_{k}.png" if as_csv else f"{name}__{prompt}.png"
            _save_image(Image.fromarray(union.astype(np.uint8) * 255, "L"), out / "masks" / mask_name)
            rows.append((f"images/{name}.jpg", f"masks/{mask_name}", prompt))
    if not as_csv:
        return out
    path = out / "annotations.csv"
    with atomic_path(path) as temporary:
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "mask", "prompt"])
            writer.writerows(rows)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m clipseg.data.synthetic {phrasecut,coco,folder,folder-csv} OUT --n 200``."""
    parser = argparse.ArgumentParser(prog="python -m clipseg.data.synthetic", description=main.__doc__)
    parser.add_argument("format", choices=["phrasecut", "coco", "folder", "folder-csv"])
    parser.add_argument("out", type=Path, help="output directory (created if missing)")
    parser.add_argument("--n", type=int, default=200, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args(argv)
    size = (args.height, args.width)
    if args.format == "phrasecut":
        written = write_phrasecut(args.out, args.n, seed=args.seed, size=size)
    elif args.format == "coco":
        written = write_coco(args.out, args.n, seed=args.seed, size=size)
    else:
        written = write_folder(args.out, args.n, seed=args.seed, size=size, as_csv=args.format == "folder-csv")
    print(written)


if __name__ == "__main__":
    main()
