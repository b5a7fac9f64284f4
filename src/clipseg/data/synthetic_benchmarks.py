"""Small synthetic benchmark datasets in the official on-disk formats, for end-to-end tests of the protocols.

Every writer renders scenes of coloured shapes (`clipseg.data.synthetic.render_scene`) and stores them exactly as
the real dataset is laid out, assigning the k-th shape written to the k-th category in turn (so every category
appears early and often):

- `write_pascal`: VOC2012 (JPEGImages, palette SegmentationClass with a void border, SegmentationClassAug,
  ImageSets), SBD (img, cls/*.mat, train/val lists), HSNet's Pascal-5i fold lists and PFENet's val list;
- `write_coco2014`: COCO 2014 instances (``annotations/instances_val2014.json``, ``val2014/``) with the 80 COCO
  categories and their real ids, plus HSNet-style class-wise fold lists;
- `write_lvis`: LVIS v1 (``lvis_v1_val.json`` with ``coco_url`` image links, ``val2017/``) whose categories include
  every object of the generalized-prompt mapping.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from ..fileio import atomic_path, write_bytes, write_text
from .lvis import generalized_prompt_groups
from .pascal import IGNORE_LABEL, VOC_CLASSES, pascal5i_classes
from .synthetic import Scene, _save_image, render_scene

# fmt: off
COCO_CATEGORIES: tuple[tuple[int, str], ...] = tuple(zip(
    [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91)],
    ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
     "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
     "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
     "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
     "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
     "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
     "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
     "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
     "hair drier", "toothbrush"],
    strict=True,
))
# fmt: on
"""The 80 COCO categories (id, name) in id order; COCO-20i indexes them 0..79 in this order."""


def _scenes(n_images: int, seed: int, size: tuple[int, int]) -> Iterator[Scene]:
    if n_images < 2:
        raise ValueError(f"n_images must be at least 2, got {n_images}")
    rng = np.random.default_rng(seed)
    for _ in range(n_images):
        yield render_scene(rng, size=size, n_shapes=(2, 3))


def _voc_palette() -> list[int]:
    """The standard VOC colour map (bit-interleaved class index), 256 RGB entries."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [red, green, blue]
    return palette


def _void_border(mask: np.ndarray) -> np.ndarray:
    grown = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(3)), dtype=bool)
    return grown & ~mask


def write_pascal(
    out_dir: str | os.PathLike,
    n_images: int = 24,
    *,
    seed: int = 0,
    size: tuple[int, int] = (96, 96),
    val_fraction: float = 0.75,
    min_pixels: int = 64,
) -> Path:
    """Write synthetic Pascal VOC 2012 + SBD + Pascal-5i lists under `out_dir`; return `out_dir`.

    Layout: ``VOCdevkit/VOC2012/...``, ``benchmark_RELEASE/dataset/...``, ``hsnet/data/splits/pascal/val/fold<i>.txt``
    (PFENet's rule with `min_pixels`, since synthetic objects are smaller than PFENet's 2048 pixels) and
    ``pfenet/lists/pascal/val.txt``. The first `val_fraction` of the images form the val split.
    """
    from scipy.io import savemat

    out = Path(out_dir)
    voc = out / "VOCdevkit" / "VOC2012"
    sbd = out / "benchmark_RELEASE" / "dataset"
    palette = _voc_palette()
    ids, labels = [], {}
    shape_count = 0
    for index, scene in enumerate(_scenes(n_images, seed, size)):
        image_id = f"2008_{index:06d}"
        label = np.zeros(size, dtype=np.uint8)
        void = np.zeros(size, dtype=bool)
        for shape in scene.shapes:
            label[shape.mask] = shape_count % len(VOC_CLASSES) + 1
            void |= _void_border(shape.mask)
            shape_count += 1
        sbd_label = label.copy()  # SBD has no void label
        label[void & (label == 0)] = IGNORE_LABEL
        ids.append(image_id)
        labels[image_id] = label
        _save_image(scene.image, voc / "JPEGImages" / f"{image_id}.jpg")
        _save_image(scene.image, sbd / "img" / f"{image_id}.jpg")
        palette_png = Image.fromarray(label, "P")
        palette_png.putpalette(palette)
        _save_image(palette_png, voc / "SegmentationClass" / f"{image_id}.png")
        _save_image(Image.fromarray(label, "L"), voc / "SegmentationClassAug" / f"{image_id}.png")
        present = np.unique(sbd_label[sbd_label > 0]).astype(np.uint8)
        boundaries = np.empty((len(present), 1), dtype=object)
        for row, class_id in enumerate(present):
            boundaries[row, 0] = _void_border(sbd_label == class_id).astype(np.uint8)
        gt = {"Segmentation": sbd_label, "Boundaries": boundaries, "CategoriesPresent": present}
        with atomic_path(sbd / "cls" / f"{image_id}.mat") as temporary:
            savemat(temporary, {"GTcls": gt})
    n_val = max(2, int(round(val_fraction * n_images)))
    val_ids, train_ids = ids[:n_val], ids[n_val:]
    for split, split_ids in (("val", val_ids), ("train", train_ids), ("trainval", ids)):
        write_text(voc / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in split_ids))
    for split, split_ids in (("val", val_ids), ("train", train_ids)):
        write_text(sbd / f"{split}.txt", "".join(f"{i}\n" for i in split_ids))
    for fold in range(4):
        classes = set(pascal5i_classes(fold))
        lines = []
        for image_id in val_ids:
            values, counts = np.unique(labels[image_id], return_counts=True)
            lines += [f"{image_id}__{int(v):02d}\n" for v, c in zip(values, counts) if v in classes and c >= min_pixels]
        write_text(out / "hsnet" / "data" / "splits" / "pascal" / "val" / f"fold{fold}.txt", "".join(lines))
    pfenet_lines = "".join(f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in val_ids)
    write_text(out / "pfenet" / "lists" / "pascal" / "val.txt", pfenet_lines)
    return out


def _polygon_annotation(shape, annotation_id: int, image_id: int, category_id: int) -> dict[str, Any]:
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": shape.polygon,
        "area": float(shape.mask.sum()),
        "bbox": list(shape.bbox),
        "iscrowd": 0,
    }


def write_coco2014(
    out_dir: str | os.PathLike,
    n_images: int = 80,
    *,
    seed: int = 0,
    size: tuple[int, int] = (96, 96),
    split: str = "val2014",
    min_pixels: int = 64,
) -> Path:
    """Write a synthetic COCO 2014 split (``<split>/COCO_<split>_<12 digits>.jpg``,
    ``annotations/instances_<split>.json``) and HSNet-style class-wise fold files
    (``splits/coco/val/fold<i>.pkl``: {0-based class: ["<split>/<file>", ...]}, PFENet's area rule with
    `min_pixels`); return `out_dir`. The k-th shape written gets the k-th COCO category in turn."""
    out = Path(out_dir)
    images, annotations = [], []
    classwise: dict[int, list[str]] = {}
    shape_count = 0
    for index, scene in enumerate(_scenes(n_images, seed, size)):
        image_id = 100 + index
        file_name = f"COCO_{split}_{image_id:012d}.jpg"
        _save_image(scene.image, out / split / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": size[0], "width": size[1]})
        for shape in scene.shapes:
            class_index = shape_count % len(COCO_CATEGORIES)
            annotations.append(
                _polygon_annotation(shape, len(annotations) + 1, image_id, COCO_CATEGORIES[class_index][0])
            )
            if shape.mask.sum() >= min_pixels:
                names = classwise.setdefault(class_index, [])
                if f"{split}/{file_name}" not in names:
                    names.append(f"{split}/{file_name}")
            shape_count += 1
    categories = [{"id": i, "name": name, "supercategory": "object"} for i, name in COCO_CATEGORIES]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    write_text(out / "annotations" / f"instances_{split}.json", json.dumps(instances))
    for fold in range(4):
        fold_lists = {c: classwise.get(c, []) for c in range(fold, 80, 4)}
        write_bytes(out / "splits" / "coco" / "val" / f"fold{fold}.pkl", pickle.dumps(fold_lists, protocol=3))
    return out


def lvis_names(extra: Sequence[str] = ("cup", "table", "lamp", "book")) -> list[str]:
    """LVIS-style category names of the synthetic LVIS set: every mapped object, plus a few unmapped ones."""
    names: list[str] = []
    for prompts in generalized_prompt_groups().values():
        for objects in prompts.values():
            names += [n for n in objects if n not in names]
    return names + [n for n in extra if n not in names]


def write_lvis(
    out_dir: str | os.PathLike,
    n_images: int = 40,
    *,
    seed: int = 0,
    size: tuple[int, int] = (96, 96),
) -> Path:
    """Write a synthetic LVIS v1 val set (``lvis_v1_val.json`` + ``val2017/<12 digits>.jpg``); return `out_dir`.

    Category names use LVIS spelling (``"bus_(vehicle)"``); the k-th shape written gets the k-th name of
    `lvis_names` in turn.
    """
    out = Path(out_dir)
    names = lvis_names()
    categories = [
        {
            "id": k + 1,
            "name": name.replace(" ", "_"),
            "synonyms": [name.replace(" ", "_")],
            "frequency": "f",
            "synset": f"{name.replace(' ', '_')}.n.01",
        }
        for k, name in enumerate(names)
    ]
    images, annotations = [], []
    shape_count = 0
    for index, scene in enumerate(_scenes(n_images, seed, size)):
        image_id = 1000 + index
        file_name = f"{image_id:012d}.jpg"
        _save_image(scene.image, out / "val2017" / file_name)
        images.append(
            {
                "id": image_id,
                "coco_url": f"http://images.cocodataset.org/val2017/{file_name}",
                "height": size[0],
                "width": size[1],
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        )
        for shape in scene.shapes:
            annotation = _polygon_annotation(shape, len(annotations) + 1, image_id, shape_count % len(names) + 1)
            del annotation["iscrowd"]
            annotations.append(annotation)
            shape_count += 1
    data = {
        "info": {"description": "synthetic LVIS v1"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    write_text(out / "lvis_v1_val.json", json.dumps(data))
    return out
