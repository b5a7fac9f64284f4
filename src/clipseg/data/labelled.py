"""Own labelled data for evaluation: (image, prompt, mask) samples from any own-data layout, detected from the path.

Layouts (the readers of `clipseg.data.folder`, `clipseg.data.coco` and `clipseg.data.phrasecut`):

- ``folder``: a directory with ``images/`` and ``masks/<image name>__<prompt>.png``;
- ``csv``: a ``.csv`` file with the columns ``image,mask,prompt``;
- ``coco``: a COCO instances ``.json`` file (or a directory holding exactly one, not ``refer_*.json``), one sample
  per (image, category present) with the category name, exactly as written, as the prompt; images in ``images/``
  next to the file, or next to the file itself when the ``file_name`` entries are relative to it;
- ``phrasecut``: a directory in the PhraseCut layout (``refer_<split>.json`` and ``images/``, or its parent).

Images are referred to by path, so an evaluation loads them exactly as ``clipseg segment`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYOUTS: tuple[str, ...] = ("folder", "csv", "coco", "phrasecut")


@dataclass(frozen=True)
class LabelledSample:
    """One (image, prompt) pair and its ground truth.

    Attributes:
        key: stable id of the pair (the image's name or id and the prompt), used to resume evaluations.
        image: path of the image file.
        image_key: the same for every prompt of one image.
        prompt: the text prompt (class) of the mask.
        load_mask: returns the (H, W) bool mask at the image's size.
    """

    key: str
    image: Path
    image_key: str
    prompt: str
    load_mask: Callable[[], np.ndarray]


def detect_layout(path: str | Path) -> str:
    """Which of `LAYOUTS` the file or directory `path` holds; FileNotFoundError/ValueError name what is missing."""
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return "csv"
        if suffix == ".json":
            return "coco"
        raise ValueError(f"{path}: expected a .csv file (image,mask,prompt), a COCO .json file or a directory")
    if not path.is_dir():
        raise FileNotFoundError(f"labelled data not found: {path}")
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "folder"
    if list(path.glob("refer_*.json")) or list(path.glob("VGPhraseCut_v0/refer_*.json")):
        return "phrasecut"
    if len(_coco_files(path)) == 1:
        return "coco"
    raise ValueError(
        f"{path}: no own-data layout found: expected images/ + masks/ (folder), refer_<split>.json (PhraseCut), "
        "one COCO .json file, or pass a .csv / .json file"
    )


def _coco_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.json") if not p.name.startswith("refer_"))


def labelled_samples(path: str | Path, *, split: str | None = None) -> tuple[str, list[LabelledSample]]:
    """The layout of `path` and its samples, in a stable order. `split` picks a PhraseCut split (default: the only
    one present, else test, else val)."""
    path = Path(path)
    layout = detect_layout(path)
    if layout in ("folder", "csv"):
        samples = _folder(path)
    elif layout == "coco":
        samples = _coco(path if path.is_file() else _coco_files(path)[0])
    else:
        samples = _phrasecut(path, split)
    if not samples:
        raise ValueError(f"{path}: no (image, prompt, mask) samples found")
    return layout, _unique_keys(samples)


def _unique_keys(samples: list[LabelledSample]) -> list[LabelledSample]:
    """A pair listed twice (e.g. two CSV rows) gets ``#2``, ``#3`` ... so every key is unique."""
    seen: dict[str, int] = {}
    unique = []
    for sample in samples:
        count = seen[sample.key] = seen.get(sample.key, 0) + 1
        if count > 1:
            sample = LabelledSample(f"{sample.key}#{count}", sample.image, sample.image_key, sample.prompt,
                                    sample.load_mask)
        unique.append(sample)
    return unique


def _folder(path: Path) -> list[LabelledSample]:
    from .folder import FolderSource

    source = FolderSource(path)
    base = path.parent if path.is_file() else path
    samples = []
    for index, sample in enumerate(source.samples):
        image_key = _relative(sample.image_path, base)
        samples.append(
            LabelledSample(
                f"{image_key}\n{sample.prompt}", sample.image_path, image_key, sample.prompt,
                lambda i=index: source.load_mask(i),
            )
        )
    return samples


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def _coco(annotation_file: Path) -> list[LabelledSample]:
    from .coco import CocoInstances, CocoReferringSource

    instances = CocoInstances(annotation_file, _coco_image_dir(annotation_file))
    source = CocoReferringSource(instances, prompt=lambda name: name)
    samples = []
    for index, ((image_id, _), prompt) in enumerate(zip(source.samples, source.phrases)):
        samples.append(
            LabelledSample(
                f"{image_id}\n{prompt}", instances.image_path(image_id), str(image_id), prompt,
                lambda i=index: source.load_mask(i),
            )
        )
    return samples


def _coco_image_dir(annotation_file: Path) -> Path:
    """``images/`` next to the JSON when the first image is there, else the JSON's own directory."""
    images = annotation_file.parent / "images"
    try:
        first = json.loads(annotation_file.read_text(encoding="utf-8"))["images"][0]["file_name"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return images if images.is_dir() else annotation_file.parent
    return images if (images / str(first)).is_file() else annotation_file.parent


def _phrasecut(root: Path, split: str | None) -> list[LabelledSample]:
    from .phrasecut import PhraseCut

    directory = root / "VGPhraseCut_v0" if (root / "VGPhraseCut_v0").is_dir() else root
    if split is None:
        present = sorted(p.stem.removeprefix("refer_") for p in directory.glob("refer_*.json"))
        split = present[0] if len(present) == 1 else next((s for s in ("test", "val") if s in present), None)
        if split is None:
            raise ValueError(f"{directory}: several PhraseCut splits ({', '.join(present)}); choose one with --split")
    dataset = PhraseCut(directory, split, exclude_image_ids=())
    return [
        LabelledSample(
            f"{task.image_id}\n{task.task_id}\n{task.phrase}", dataset.image_path(task.image_id), str(task.image_id),
            task.phrase, lambda i=index: dataset.load_mask(i),
        )
        for index, task in enumerate(dataset.tasks)
    ]
