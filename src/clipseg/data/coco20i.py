"""COCO-20i one-shot folds and episodes on top of COCO 2014 instances (`clipseg.data.coco.CocoInstances`).

Layout::

    <root>/annotations/instances_val2014.json
    <root>/val2014/COCO_val2014_<12 digits>.jpg

Classes are the 80 COCO categories in id order, indexed 0..79; fold i holds the indices i, i+4, ..., i+76 (HSNet's
and PFENet's "split COCO"). The images of each class come from HSNet's class-wise lists
(``data/splits/coco/val/fold<i>.pkl``, read without executing anything) or are derived from the annotations with
PFENet's rule (the class covers at least 2·32·32 pixels; crowd regions count, as in the rendered masks those
lists were made from). Episodes follow HSNet's test loader: ``numpy.random.seed(0)``, then per episode a class,
a query image of it and a different support image of it, all by ``numpy.random.choice``.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .coco import CocoInstances
from .pascal import PFENET_MIN_PIXELS, Episode

COCO20I_FOLDS = 4
_COCO_HELP = (
    "download train2014.zip/val2014.zip and annotations_trainval2014.zip from https://cocodataset.org/#download "
    "and extract them there (annotations/instances_val2014.json and val2014/ must exist)"
)


def coco20i_classes(fold: int) -> list[int]:
    """The twenty 0-based class indices of COCO-20i fold `fold`: fold, fold + 4, ..., fold + 76."""
    if fold not in range(COCO20I_FOLDS):
        raise ValueError(f"COCO-20i fold must be 0..3, got {fold}")
    return list(range(fold, 80, 4))


def coco20i_category_ids(instances: CocoInstances, origin: object) -> list[int]:
    """The category id of every 0-based COCO-20i class index: the 80 COCO categories in id order."""
    category_ids = sorted(instances.categories)
    if len(category_ids) != 80:
        raise ValueError(f"{origin}: COCO-20i needs the 80 COCO categories, found {len(category_ids)}")
    return category_ids


def excluded_category_ids(instances: CocoInstances, entries: Sequence[str], origin: object) -> set[int]:
    """The category ids `entries` name: category names, or ``coco-20i-<fold>`` for the twenty classes of a
    COCO-20i fold (indices fold, fold + 4, ..., fold + 76 of the categories in id order), which HSNet's training
    lists (and so the released COCO-20i runs) held out: no sample of them, their objects left as background."""
    excluded: set[int] = set()
    for entry in entries:
        match = re.fullmatch(r"coco-20i-(\d+)", entry)
        if match:
            category_ids = coco20i_category_ids(instances, origin)
            excluded.update(category_ids[c] for c in coco20i_classes(int(match.group(1))))
            continue
        try:
            excluded.add(instances.category_id(entry))
        except KeyError:
            raise ValueError(
                f"{origin}: no category named {entry!r} to exclude (a category name of the dataset, or coco-20i-0..3)"
            ) from None
    return excluded


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds only plain containers, strings and numbers: any reference to a class or function is refused, so
    nothing from the file can run."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only plain data is read from split files")


def read_hsnet_coco_split(path: str | os.PathLike) -> dict[int, list[str]]:
    """HSNet's COCO-20i class-wise list: {0-based class: ["val2014/<file>.jpg", ...]}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"HSNet COCO-20i split file not found at {path}: copy data/splits/coco/val/fold<i>.pkl from "
            "github.com/juhongm999/hsnet, or leave 'splits' unset to derive the lists from the annotations"
        )
    try:
        data = _DataOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: not a class-wise split file ({error})") from None
    if not isinstance(data, Mapping) or not all(
        isinstance(k, int) and isinstance(v, list) and all(isinstance(n, str) for n in v) for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a mapping from class index to a list of image paths")
    return {int(k): list(v) for k, v in data.items()}


class Coco20i:
    """The COCO 2014 split used by COCO-20i, with class indices 0..79 and per-class masks.

    Args:
        root: directory with ``annotations/instances_<split>.json`` and ``<split>/``.
        split: ``"val2014"`` for testing.
    """

    def __init__(self, root: str | os.PathLike, *, split: str = "val2014") -> None:
        root = Path(root)
        annotation_file = root / "annotations" / f"instances_{split}.json"
        if not annotation_file.is_file() or not (root / split).is_dir():
            raise FileNotFoundError(
                f"COCO 2014 ({split}) not found at {root}: {_COCO_HELP}, or set its path in the config"
            )
        self.root = root
        self.split = split
        self.instances = CocoInstances(annotation_file, root / split)
        self.category_ids = coco20i_category_ids(self.instances, annotation_file)
        self._image_by_name = {image.file_name: image_id for image_id, image in self.instances.images.items()}

    def class_name(self, class_index: int) -> str:
        """Category name of a 0-based class index."""
        return self.instances.categories[self.category_ids[class_index]]

    def image_id(self, name: str) -> int:
        """Image id of an HSNet-style name (``val2014/<file>`` or just ``<file>``)."""
        file_name = name.rsplit("/", 1)[-1]
        if file_name not in self._image_by_name:
            raise KeyError(f"image {name!r} is not in {self.instances.annotation_file}")
        return self._image_by_name[file_name]

    def load_image(self, name: str) -> Image.Image:
        return self.instances.load_image(self.image_id(name))

    def class_mask(self, name: str, class_index: int) -> np.ndarray:
        """(H, W) bool mask of every instance of the class in the image (crowd regions included)."""
        return self.instances.category_mask(self.image_id(name), self.category_ids[class_index])

    def classwise_from_annotations(self, fold: int, *, min_pixels: int = PFENET_MIN_PIXELS) -> dict[int, list[str]]:
        """{class index: image names} of a fold by PFENet's area rule, images in id order."""
        classes = coco20i_classes(fold)
        wanted = {self.category_ids[c]: c for c in classes}
        classwise: dict[int, list[str]] = {c: [] for c in classes}
        for image_id in self.instances.image_ids:
            for category_id in self.instances.categories_in(image_id):
                if category_id in wanted and self.instances.category_mask(image_id, category_id).sum() >= min_pixels:
                    classwise[wanted[category_id]].append(f"{self.split}/{self.instances.images[image_id].file_name}")
        return classwise


def sample_coco_episodes(
    classwise: Mapping[int, Sequence[str]], classes: Sequence[int], n_episodes: int = 1000, *, seed: int = 0
) -> list[Episode]:
    """HSNet's COCO-20i test episodes: per episode a class, then a query and a different support image of it."""
    usable = [c for c in classes if len(set(classwise.get(c, ()))) >= 2]
    if len(usable) != len(classes):
        missing = sorted(set(classes) - set(usable))
        raise ValueError(f"classes {missing} have fewer than two images: no one-shot episode can be formed")
    random = np.random.RandomState(seed)
    episodes = []
    for index in range(n_episodes):
        class_index = int(random.choice(list(classes), 1, replace=False)[0])
        query = str(random.choice(list(classwise[class_index]), 1, replace=False)[0])
        while True:
            support = str(random.choice(list(classwise[class_index]), 1, replace=False)[0])
            if support != query:
                break
        episodes.append(Episode(index, query, support, class_index))
    return episodes
