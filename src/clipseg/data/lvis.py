"""LVIS v1 in its official layout, and the generalized-prompt (Table 8) mapping of the paper's supplementary.

Layout::

    <root>/lvis_v1_val.json              (or lvis_v1_train.json)
    <root>/val2017/<12-digit id>.jpg     COCO 2017 images; LVIS names each image's folder in its coco_url
    <root>/train2017/<12-digit id>.jpg

The JSON has ``images`` (id, coco_url, height, width), ``annotations`` (id, image_id, category_id, polygon
``segmentation``, area, bbox) and ``categories`` (id, name such as ``"bus_(vehicle)"``, synonyms).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..fileio import read_annotation_json
from ..image import read_image_file

_LVIS_HELP = (
    "download lvis_v1_val.json(.zip) from https://www.lvisdataset.org/dataset and the COCO 2017 images "
    "(val2017.zip, train2017.zip from https://cocodataset.org/#download) and put the JSON and the image folders "
    "side by side there"
)
GENERALIZED_PROMPTS_FILE = "lvis_generalized_prompts.json"


def normalise_category_name(name: str) -> str:
    """LVIS names use underscores (``"bus_(vehicle)"``), the paper spaces: compare lower-cased with spaces."""
    return " ".join(name.replace("_", " ").lower().split())


def generalized_prompt_groups() -> dict[str, dict[str, list[str]]]:
    """The supplementary's mapping: group ("affordances", "attributes", "meronymy") -> prompt -> LVIS names."""
    text = (resources.files("clipseg") / "assets" / GENERALIZED_PROMPTS_FILE).read_text(encoding="utf-8")
    return json.loads(text)["groups"]


@dataclass(frozen=True)
class LVISAnnotation:
    """One object instance."""

    id: int
    image_id: int
    category_id: int
    segmentation: Any
    area: float


class LVIS:
    """Images, categories and instance masks of one LVIS v1 annotation file.

    Args:
        annotation_file: ``lvis_v1_val.json`` (or train).
        image_root: directory holding ``val2017/`` and ``train2017/``; defaults to the JSON's directory.
    """

    def __init__(self, annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> None:
        path = Path(annotation_file)
        if path.is_dir():
            path = path / "lvis_v1_val.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"LVIS annotations not found at {path}: {_LVIS_HELP}, or set its path in the config"
            )
        data = read_annotation_json(path)
        missing = {"images", "annotations", "categories"} - set(data)
        if missing:
            raise ValueError(f"{path}: not an LVIS/COCO instances file (missing {sorted(missing)})")
        self.path = path
        self.image_root = Path(image_root) if image_root is not None else path.parent
        self.images: dict[int, dict[str, Any]] = {int(image["id"]): image for image in data["images"]}
        self.categories: dict[int, dict[str, Any]] = {int(c["id"]): c for c in data["categories"]}
        self.annotations_by_image: dict[int, list[LVISAnnotation]] = {}
        for raw in data["annotations"]:
            annotation = LVISAnnotation(
                int(raw["id"]),
                int(raw["image_id"]),
                int(raw["category_id"]),
                raw["segmentation"],
                float(raw.get("area", 0.0)),
            )
            self.annotations_by_image.setdefault(annotation.image_id, []).append(annotation)

    def category_name(self, category_id: int) -> str:
        """The paper's spelling of a category: ``"bus (vehicle)"`` for ``"bus_(vehicle)"``."""
        return self.categories[category_id]["name"].replace("_", " ")

    def category_ids(self, names: Iterable[str]) -> tuple[dict[str, int], list[str]]:
        """Look up category names (either spelling; synonyms count too) -> ({name: id}, names not found)."""
        lookup: dict[str, int] = {}
        for category_id, category in sorted(self.categories.items()):
            for name in [category["name"], *category.get("synonyms", [])]:
                lookup.setdefault(normalise_category_name(name), category_id)
        found, missing = {}, []
        for name in names:
            key = normalise_category_name(name)
            if key in lookup:
                found[name] = lookup[key]
            else:
                missing.append(name)
        return found, missing

    def image_path(self, image_id: int) -> Path:
        """``<image_root>/<folder>/<file>`` with folder and file taken from the image's ``coco_url``."""
        image = self.images[image_id]
        url = image.get("coco_url") or image.get("file_name")
        if not url:
            raise ValueError(f"{self.path}: image {image_id} has neither coco_url nor file_name")
        parts = url.rstrip("/").split("/")
        return self.image_root.joinpath(*parts[-2:])

    def load_image(self, image_id: int) -> Image.Image:
        """The RGB image `image_id`."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(f"LVIS image not found at {path}: {_LVIS_HELP}")
        return read_image_file(path).convert("RGB")

    def instance_mask(self, annotation: LVISAnnotation) -> np.ndarray:
        """(H, W) bool mask of one instance (polygons or RLE, decoded like COCO's ``annToMask``)."""
        from .coco import segmentation_to_mask

        image = self.images[annotation.image_id]
        return segmentation_to_mask(annotation.segmentation, int(image["height"]), int(image["width"]))

    def category_mask(self, image_id: int, category_ids: Iterable[int]) -> np.ndarray:
        """Union of the masks of every instance of `category_ids` in the image."""
        wanted = set(category_ids)
        image = self.images[image_id]
        mask = np.zeros((int(image["height"]), int(image["width"])), dtype=bool)
        for annotation in self.annotations_by_image.get(image_id, []):
            if annotation.category_id in wanted:
                mask |= self.instance_mask(annotation)
        return mask
