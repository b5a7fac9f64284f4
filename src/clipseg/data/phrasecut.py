"""Reader of the VGPhraseCut dataset in its official on-disk layout (github.com/ChenyunWu/PhraseCutDataset).

Layout::

    VGPhraseCut_v0/
        refer_train.json, refer_val.json, refer_test.json, refer_miniv.json
        images/<image_id>.jpg

Each ``refer_<split>.json`` is a list of tasks (one phrase-region pair each) with the keys ``task_id``,
``image_id``, ``ann_ids``, ``instance_boxes`` (xywh), ``Polygons`` (one list of polygons per instance, each
polygon a list of ``[x, y]`` points), ``phrase`` and ``phrase_structure``. Masks are rasterised as the released
CLIPSeg code did for training and for the PhraseCut test ground truth (scikit-image's ``polygon2mask``: a pixel is
inside when its centre is, float coordinates, union over instances), at the size of the image file.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..fileio import read_annotation_json
from ..image import read_image_file

# Images whose size in the annotations does not match the actual file; the original CLIPSeg code skips them.
SIZE_MISMATCH_IMAGE_IDS: frozenset[int] = frozenset({
    150417, 285665, 498246, 61564, 285743, 498269, 498010, 150516, 150344, 286093, 61530, 150333, 286065, 285814,
    498187, 285761, 498042,
})
SPLITS: tuple[str, ...] = ("train", "val", "test", "miniv")

Polygon = Sequence[Sequence[float]]


@dataclass(frozen=True)
class PhraseCutTask:
    """One phrase-region pair: the phrase and the polygons of every instance it refers to."""

    task_id: str
    image_id: int
    phrase: str
    polygons: list[list[Polygon]]
    instance_boxes: list[list[float]]
    phrase_structure: dict[str, Any]


def polygons_to_mask(instance_polygons: Sequence[Sequence[Polygon]], height: int, width: int) -> np.ndarray:
    """Rasterise PhraseCut ``Polygons`` (per instance, a list of ``[x, y]``-point polygons) to an (H, W) bool mask.

    As the released CLIPSeg ``load_sample``: each polygon through ``skimage.draw.polygon2mask`` with its points as
    float (row, column) = (y, x) coordinates (pixels whose centres lie inside), then the union over all polygons of
    all instances. (The PhraseCut tools' PIL drawing adds the outline: about one pixel larger all round.)
    """
    try:
        from skimage.draw import polygon2mask
    except ImportError:
        raise ImportError(
            "rasterising PhraseCut polygons needs scikit-image: pip install 'clipseg[train]' (or clipseg[eval])"
        ) from None
    mask = np.zeros((height, width), dtype=bool)
    for polygons in instance_polygons:
        for polygon in polygons:
            points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
            if len(points) == 0:
                continue
            mask |= polygon2mask((height, width), points[:, ::-1])
    return mask


def _dataset_dir(root: str | Path) -> Path:
    root = Path(root)
    if (root / "VGPhraseCut_v0").is_dir():
        return root / "VGPhraseCut_v0"
    if not root.is_dir():
        raise FileNotFoundError(f"PhraseCut directory not found: {root}")
    return root


def _parse_task(raw: dict[str, Any], source: Path) -> PhraseCutTask:
    try:
        return PhraseCutTask(
            task_id=str(raw["task_id"]),
            image_id=int(raw["image_id"]),
            phrase=str(raw["phrase"]),
            polygons=raw["Polygons"],
            instance_boxes=raw.get("instance_boxes", []),
            phrase_structure=raw.get("phrase_structure", {}),
        )
    except KeyError as missing:
        raise ValueError(f"{source}: task {raw.get('task_id', '?')} lacks the key {missing}") from None


class PhraseCut:
    """The tasks of one or more PhraseCut splits, with image and mask loading.

    Args:
        root: the ``VGPhraseCut_v0`` directory or its parent.
        split: ``"train"``, ``"val"``, ``"test"``, ``"miniv"``, or several joined by ``_`` (``"val_miniv"`` is the
            full validation set, as in the official loader).
        exclude_image_ids: images to skip; by default the ones whose annotated size does not match the file.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        exclude_image_ids: Collection[int] = SIZE_MISMATCH_IMAGE_IDS,
    ) -> None:
        self.root = _dataset_dir(root)
        self.split = split
        tasks: list[PhraseCutTask] = []
        for part in split.split("_"):
            if part not in SPLITS:
                raise ValueError(f"unknown PhraseCut split {part!r}; expected {', '.join(SPLITS)} (joined by '_')")
            path = self.root / f"refer_{part}.json"
            if not path.is_file():
                raise FileNotFoundError(f"PhraseCut annotation file not found: {path}")
            raw_tasks = read_annotation_json(path)
            if not isinstance(raw_tasks, list):
                raise ValueError(f"{path}: expected a JSON list of tasks, got {type(raw_tasks).__name__}")
            tasks.extend(_parse_task(raw, path) for raw in raw_tasks)
        excluded = set(exclude_image_ids)
        self.tasks: list[PhraseCutTask] = [task for task in tasks if task.image_id not in excluded]

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def phrases(self) -> list[str]:
        """The phrase of every task, in task order."""
        return [task.phrase for task in self.tasks]

    @property
    def image_keys(self) -> list[int]:
        """The image id of every task (tasks of one image share it)."""
        return [task.image_id for task in self.tasks]

    def image_path(self, image_id: int) -> Path:
        """Path of an image file, ``images/<image_id>.jpg``."""
        return self.root / "images" / f"{image_id}.jpg"

    def _open(self, index: int) -> Image.Image:
        path = self.image_path(self.tasks[index].image_id)
        if not path.is_file():
            raise FileNotFoundError(f"PhraseCut image not found: {path}")
        return Image.open(path)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of task `index`."""
        return read_image_file(self.image_path(self.tasks[index].image_id)).convert("RGB")

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) bool target mask of task `index`, at the size of its image file."""
        with self._open(index) as image:  # only the header is read
            width, height = image.size
        return polygons_to_mask(self.tasks[index].polygons, height, width)
