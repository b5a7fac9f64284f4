"""COCO-format instance segmentation datasets: images, categories and per-category masks.

Reads any instances JSON in the COCO format (``images``, ``annotations``, ``categories``), with segmentations as
polygons, compressed RLE or uncompressed RLE, decoded with pycocotools' mask API exactly as ``COCO.annToMask``
does. `CocoInstances` is the reader (also the basis of the COCO-20i benchmark); `CocoReferringSource` turns it
into referring-segmentation samples for fine-tuning, one per (image, category present), prompted with the
category name — wrap it in `clipseg.data.phrasecut_plus.PhraseCutPlus` to get training samples.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..fileio import read_annotation_json
from ..image import read_image_file


@dataclass(frozen=True)
class CocoImage:
    """One entry of the ``images`` list."""

    id: int
    file_name: str
    height: int
    width: int


def segmentation_to_mask(segmentation: list[list[float]] | dict[str, Any], height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, compressed or uncompressed RLE) to an (H, W) bool mask.

    Degenerate polygons with fewer than three points are skipped (pycocotools would misread a 4-number polygon as a
    box); an RLE whose size differs from (height, width) raises ValueError.
    """
    if isinstance(segmentation, list):
        polygons = [polygon for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} does not match the image size {[height, width]}")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
    else:
        raise ValueError(f"unrecognised COCO segmentation of type {type(segmentation).__name__}")
    with warnings.catch_warnings():
        # pycocotools' decode trips numpy 2's copy-keyword DeprecationWarning internally; the result is unaffected.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


class CocoInstances:
    """A COCO-format instances file and its image directory.

    Args:
        annotation_file: the instances JSON.
        image_dir: directory holding the images' ``file_name`` paths; defaults to ``images/`` next to the JSON.
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path | None = None) -> None:
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.annotation_file}")
        self.image_dir = Path(image_dir) if image_dir is not None else self.annotation_file.parent / "images"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image directory not found: {self.image_dir}")
        data = read_annotation_json(self.annotation_file)
        missing = [key for key in ("images", "annotations", "categories") if key not in data]
        if missing:
            raise ValueError(f"{self.annotation_file}: not a COCO instances file, missing {missing}")
        self.images: dict[int, CocoImage] = {
            int(raw["id"]): CocoImage(int(raw["id"]), str(raw["file_name"]), int(raw["height"]), int(raw["width"]))
            for raw in data["images"]
        }
        self.categories: dict[int, str] = {int(raw["id"]): str(raw["name"]) for raw in data["categories"]}
        self._annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for annotation in data["annotations"]:
            image_id, category_id = int(annotation["image_id"]), int(annotation["category_id"])
            if image_id not in self.images or category_id not in self.categories:
                raise ValueError(
                    f"{self.annotation_file}: annotation {annotation.get('id')} refers to unknown image {image_id} "
                    f"or category {category_id}"
                )
            self._annotations[image_id].append(annotation)

    @property
    def image_ids(self) -> list[int]:
        """All image ids, sorted."""
        return sorted(self.images)

    def category_id(self, name: str) -> int:
        """The id of the category called `name`."""
        for category_id, category_name in self.categories.items():
            if category_name == name:
                return category_id
        raise KeyError(f"no COCO category named {name!r}")

    def annotations(
        self, image_id: int, category_id: int | None = None, *, include_crowd: bool = True
    ) -> list[dict[str, Any]]:
        """The raw annotations of an image, optionally of one category and without crowd regions."""
        return [
            annotation
            for annotation in self._annotations.get(image_id, [])
            if (category_id is None or annotation["category_id"] == category_id)
            and (include_crowd or not annotation.get("iscrowd", 0))
        ]

    def categories_in(self, image_id: int, *, include_crowd: bool = True) -> list[int]:
        """Sorted ids of the categories annotated in an image."""
        return sorted({a["category_id"] for a in self.annotations(image_id, include_crowd=include_crowd)})

    def instance_mask(self, annotation: dict[str, Any]) -> np.ndarray:
        """The (H, W) bool mask of one annotation."""
        image = self.images[int(annotation["image_id"])]
        return segmentation_to_mask(annotation["segmentation"], image.height, image.width)

    def category_mask(self, image_id: int, category_id: int, *, include_crowd: bool = True) -> np.ndarray:
        """The union of all masks of a category in an image, (H, W) bool (all False if it is absent)."""
        image = self.images[image_id]
        mask = np.zeros((image.height, image.width), dtype=bool)
        for annotation in self.annotations(image_id, category_id, include_crowd=include_crowd):
            mask |= self.instance_mask(annotation)
        return mask

    def image_path(self, image_id: int) -> Path:
        """Path of an image file."""
        return self.image_dir / self.images[image_id].file_name

    def load_image(self, image_id: int) -> Image.Image:
        """The RGB image `image_id`; raises ValueError if its size differs from the annotation file's."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(f"COCO image not found: {path}")
        rgb = read_image_file(path).convert("RGB")
        expected = self.images[image_id]
        if rgb.size != (expected.width, expected.height):
            raise ValueError(
                f"{path}: image is {rgb.size[0]}x{rgb.size[1]} "
                f"but the annotations say {expected.width}x{expected.height}"
            )
        return rgb


def _default_prompt(name: str) -> str:
    return name.replace("_", " ")


class CocoReferringSource:
    """Referring-segmentation samples from a COCO-format dataset: one per (image, category present).

    Args:
        instances: the dataset.
        category_ids: restrict to these categories (default: all).
        include_crowd: count crowd regions as part of the target.
        prompt: maps a category name to its phrase (default: underscores become spaces).
    """

    def __init__(
        self,
        instances: CocoInstances,
        *,
        category_ids: Collection[int] | None = None,
        include_crowd: bool = True,
        prompt: Callable[[str], str] = _default_prompt,
    ) -> None:
        unknown = set(category_ids or ()) - set(instances.categories)
        if unknown:
            raise ValueError(f"unknown COCO category ids {sorted(unknown)}")
        wanted = set(category_ids) if category_ids is not None else set(instances.categories)
        self.instances = instances
        self.include_crowd = include_crowd
        self.samples: list[tuple[int, int]] = [
            (image_id, category_id)
            for image_id in instances.image_ids
            for category_id in instances.categories_in(image_id, include_crowd=include_crowd)
            if category_id in wanted
        ]
        self._phrases = [prompt(instances.categories[category_id]) for _, category_id in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def phrases(self) -> list[str]:
        """The category phrase of every sample."""
        return self._phrases

    @property
    def image_keys(self) -> list[int]:
        """The COCO image id of every sample (samples of one image share it)."""
        return [image_id for image_id, _ in self.samples]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample `index`."""
        return self.instances.load_image(self.samples[index][0])

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) bool mask of all instances of the sample's category."""
        image_id, category_id = self.samples[index]
        return self.instances.category_mask(image_id, category_id, include_crowd=self.include_crowd)
