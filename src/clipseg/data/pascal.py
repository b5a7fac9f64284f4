"""Pascal VOC 2012 (+ SBD) in their official layouts, and the Pascal-5i one-shot folds and episodes.

Layouts read::

    <root>/VOCdevkit/VOC2012/            (or <root>/VOC2012/, or the VOC2012 directory itself)
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png       palette PNG, value = class index (1..20), 0 background, 255 void
        SegmentationClassAug/<id>.png    the SBD-augmented labels PFENet and HSNet use (same values)
        ImageSets/Segmentation/{train,val,trainval}.txt
    <sbd_root>/benchmark_RELEASE/dataset/  (or the dataset directory itself)
        img/<id>.jpg, cls/<id>.mat (struct GTcls with field Segmentation), train.txt, val.txt

Pascal-5i (Shaban et al.; the PFENet and HSNet protocol): fold i holds the classes 5i+1..5i+5. The (image, class)
pairs of a fold come from HSNet's split lists (``data/splits/pascal/val/fold<i>.txt``, lines ``<id>__<class>``),
or are derived from the labels with PFENet's rule (a class counts in an image when it covers at least 2·32·32
pixels). Episodes follow HSNet's test loader exactly: ``numpy.random.seed(0)``, episode k queries pair
``k mod len(pairs)`` and draws the support among the fold's other images of the same class.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..image import read_image_file

# fmt: off
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# fmt: on
"""The 20 VOC classes; class ``VOC_CLASSES[k]`` has label value k + 1 (0 is background)."""
IGNORE_LABEL = 255
PASCAL5I_FOLDS = 4
PFENET_MIN_PIXELS = 2 * 32 * 32
ANNOTATION_SOURCES = ("SegmentationClass", "SegmentationClassAug", "SBD")

_VOC_HELP = (
    "download VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and extract it "
    "there (JPEGImages/ must exist); for SegmentationClassAug add the SBD-augmented labels (SegmentationClassAug.zip "
    "as used by PFENet/HSNet) under VOC2012/"
)
_SBD_HELP = (
    "download benchmark.tgz (SBD) from http://home.bharathh.info/pubs/codes/SBD/download.html and extract it there "
    "(benchmark_RELEASE/dataset/cls/ must exist)"
)


def _not_found(what: str, path: Path, help_text: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found at {path}: {help_text}, or set its path in the config")


def find_voc_root(root: str | os.PathLike) -> Path:
    """The ``VOC2012`` directory under `root` (accepts the directory itself, its parent, or VOCdevkit's parent)."""
    return _find_root(root, ("VOC2012", "VOCdevkit/VOC2012"), "JPEGImages", "Pascal VOC 2012", _VOC_HELP)


def find_sbd_root(root: str | os.PathLike) -> Path:
    """SBD's ``dataset`` directory under `root` (the directory itself, ``benchmark_RELEASE`` or its parent)."""
    what = "SBD (Semantic Boundaries Dataset)"
    return _find_root(root, ("dataset", "benchmark_RELEASE/dataset"), "cls", what, _SBD_HELP)


def _find_root(root: str | os.PathLike, below: tuple[str, ...], marker: str, what: str, help_text: str) -> Path:
    """`root` itself or the first of `below` it that holds the directory `marker`."""
    root = Path(root)
    for candidate in (root, *(root / relative for relative in below)):
        if (candidate / marker).is_dir():
            return candidate
    raise _not_found(what, root, help_text)


def read_sbd_label(path: str | os.PathLike) -> np.ndarray:
    """Class label map (H, W) uint8 of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``)."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SBD label file not found: {path}")
    try:
        contents = loadmat(path, squeeze_me=True, struct_as_record=False)
        return np.asarray(contents["GTcls"].Segmentation, dtype=np.uint8)
    except (KeyError, AttributeError, ValueError) as error:
        raise ValueError(f"{path}: not an SBD class label file (GTcls.Segmentation): {error}") from None


def _read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class PascalVOC:
    """Images and class label maps of Pascal VOC 2012, with labels from VOC, SegmentationClassAug or SBD.

    Args:
        root: VOC root (see `find_voc_root`); for ``annotations="SBD"`` the SBD root (see `find_sbd_root`).
        split: image list: ``ImageSets/Segmentation/<split>.txt`` for VOC, ``<split>.txt`` for SBD.
        annotations: ``"SegmentationClass"``, ``"SegmentationClassAug"`` or ``"SBD"``.
        image_ids: explicit image ids instead of the split's list.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str = "val",
        annotations: str = "SegmentationClass",
        image_ids: Sequence[str] | None = None,
    ) -> None:
        if annotations not in ANNOTATION_SOURCES:
            raise ValueError(f"unknown annotation source {annotations!r}; expected one of {ANNOTATION_SOURCES}")
        self.annotations = annotations
        if annotations == "SBD":
            self.root = find_sbd_root(root)
            self.image_dir, list_path = self.root / "img", self.root / f"{split}.txt"
        else:
            self.root = find_voc_root(root)
            self.image_dir = self.root / "JPEGImages"
            list_path = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not (self.root / annotations).is_dir():
                raise _not_found(f"Pascal VOC {annotations}", self.root / annotations, _VOC_HELP)
        self.image_ids: list[str] = list(image_ids) if image_ids is not None else _read_id_list(list_path)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def load_image(self, image_id: str) -> Image.Image:
        """The RGB image `image_id`."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(f"Pascal image not found: {path}")
        return read_image_file(path).convert("RGB")

    def load_label(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 class map: 0 background, 1..20 `VOC_CLASSES`, 255 void."""
        if self.annotations == "SBD":
            return read_sbd_label(self.root / "cls" / f"{image_id}.mat")
        path = self.root / self.annotations / f"{image_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"Pascal label not found: {path}")
        with Image.open(path) as label:
            # Palette PNGs store class indices directly; never convert them to RGB.
            if label.mode not in ("P", "L"):
                raise ValueError(f"{path}: expected a palette or 8-bit grayscale label PNG, got mode {label.mode}")
            return np.asarray(label, dtype=np.uint8).copy()


def pascal5i_classes(fold: int) -> list[int]:
    """The five 1-based VOC labels of Pascal-5i fold `fold` (0..3): 5·fold+1 .. 5·fold+5."""
    if fold not in range(PASCAL5I_FOLDS):
        raise ValueError(f"Pascal-5i fold must be 0..3, got {fold}")
    return list(range(5 * fold + 1, 5 * fold + 6))


def read_hsnet_split(path: str | os.PathLike) -> list[tuple[str, int]]:
    """HSNet's Pascal-5i list (``<image id>__<1-based class>`` per line) as (image id, class) pairs."""
    path = Path(path)
    if not path.is_file():
        raise _not_found(
            "HSNet Pascal-5i split list",
            path,
            "copy data/splits/pascal/val/fold<i>.txt from github.com/juhongm999/hsnet (or leave 'splits' unset to "
            "derive the pairs from the labels)",
        )
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, separator, class_id = line.strip().rpartition("__")
        if not separator or not class_id.isdigit():
            raise ValueError(f"{path}:{number}: expected '<image id>__<class>', got {line.strip()!r}")
        pairs.append((name, int(class_id)))
    return pairs


def read_pfenet_list(path: str | os.PathLike) -> list[str]:
    """Image ids of a PFENet list (``JPEGImages/<id>.jpg SegmentationClassAug/<id>.png`` per line)."""
    path = Path(path)
    if not path.is_file():
        raise _not_found("PFENet image list", path, "copy lists/pascal/val.txt from github.com/dvlab-research/PFENet")
    ids = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected '<image path> <label path>', got {line.strip()!r}")
        ids.append(Path(parts[0]).stem)
    return ids


def pascal5i_pairs_from_labels(
    voc: PascalVOC, fold: int, *, min_pixels: int = PFENET_MIN_PIXELS
) -> list[tuple[str, int]]:
    """(image id, class) pairs of a fold by PFENet's rule: the fold's classes covering >= `min_pixels` pixels,
    in image-list order and ascending class order."""
    classes = set(pascal5i_classes(fold))
    pairs = []
    for image_id in voc.image_ids:
        values, counts = np.unique(voc.load_label(image_id), return_counts=True)
        pairs += [(image_id, int(v)) for v, c in zip(values, counts) if int(v) in classes and c >= min_pixels]
    return pairs


@dataclass(frozen=True)
class Episode:
    """One one-shot episode: segment `class_id` in the query image, given the support image and its mask."""

    index: int
    query: str
    support: str
    class_id: int


def sample_episodes(pairs: Sequence[tuple[str, int]], n_episodes: int = 1000, *, seed: int = 0) -> list[Episode]:
    """HSNet's test episodes: query = pair ``k mod len(pairs)``; support drawn with ``numpy.random`` (legacy
    seeding, `seed` 0 as in HSNet's ``fix_randseed(0)``) among the other images listing the same class."""
    if not pairs:
        raise ValueError("no (image, class) pairs to build episodes from")
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be positive, got {n_episodes}")
    by_class: dict[int, list[str]] = {}
    for name, class_id in pairs:
        by_class.setdefault(class_id, []).append(name)
    lonely = sorted(c for c, names in by_class.items() if len(set(names)) < 2)
    if lonely:
        raise ValueError(f"classes {lonely} occur in fewer than two images: no support image can be drawn")
    random = np.random.RandomState(seed)
    episodes = []
    for index in range(n_episodes):
        query, class_id = pairs[index % len(pairs)]
        while True:
            support = str(random.choice(by_class[class_id], 1, replace=False)[0])
            if support != query:
                break
        episodes.append(Episode(index, query, support, class_id))
    return episodes
