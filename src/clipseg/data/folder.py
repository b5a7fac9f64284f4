"""Own data for fine-tuning: images with one mask per prompt, in a plain folder or listed in a CSV file.

Folder layout (the prompt is part of the mask's file name, after a double underscore)::

    root/images/kitchen.jpg
    root/masks/kitchen__a red cup.png
    root/masks/kitchen__the kettle.png

CSV layout: a file with the header ``image,mask,prompt`` (further columns are ignored); paths are relative to the
CSV file's directory unless absolute. Masks are grayscale images of the image's size: 0/1 masks, or 0-255 masks
where values from 128 up are the object. `FolderSource` is a referring source; wrap it in
`clipseg.data.phrasecut_plus.PhraseCutPlus` to get training samples.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..image import read_image_file

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MASK_SUFFIXES: frozenset[str] = frozenset({".png", ".bmp", ".tif", ".tiff"})
PROMPT_SEPARATOR = "__"


@dataclass(frozen=True)
class FolderSample:
    """An image, the mask of one prompt on it, and the prompt."""

    image_path: Path
    mask_path: Path
    prompt: str


def _index_images(image_dir: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in images:
            raise ValueError(f"two images share the name {path.stem!r}: {images[path.stem].name} and {path.name}")
        images[path.stem] = path
    return images


def _folder_samples(root: Path) -> list[FolderSample]:
    image_dir, mask_dir = root / "images", root / "masks"
    for directory in (image_dir, mask_dir):
        if not directory.is_dir():
            raise FileNotFoundError(f"own-data folder lacks {directory} (expected images/ and masks/)")
    images = _index_images(image_dir)
    samples = []
    for mask_path in sorted(mask_dir.iterdir()):
        if mask_path.suffix.lower() not in MASK_SUFFIXES:
            continue
        image_name, separator, prompt = mask_path.stem.partition(PROMPT_SEPARATOR)
        if not separator or not prompt.strip():
            raise ValueError(
                f"mask file {mask_path.name!r} must be named <image name>{PROMPT_SEPARATOR}<prompt>{mask_path.suffix}"
            )
        if image_name not in images:
            raise FileNotFoundError(f"no image named {image_name!r} in {image_dir} for mask {mask_path.name!r}")
        samples.append(FolderSample(images[image_name], mask_path, prompt.strip()))
    return samples


def _csv_samples(csv_path: Path) -> list[FolderSample]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "mask", "prompt"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{csv_path}: the header must name the columns image, mask, prompt; missing {sorted(missing)}"
            )
        samples = []
        for line, row in enumerate(reader, start=2):
            if not row["prompt"] or not row["prompt"].strip():
                raise ValueError(f"{csv_path}:{line}: empty prompt")
            image_path, mask_path = csv_path.parent / row["image"], csv_path.parent / row["mask"]
            for path in (image_path, mask_path):
                if not path.is_file():
                    raise FileNotFoundError(f"{csv_path}:{line}: file not found: {path}")
            samples.append(FolderSample(image_path, mask_path, row["prompt"].strip()))
    return samples


class FolderSource:
    """Referring-segmentation samples from an own-data folder or CSV file (see the module docstring).

    Args:
        root: a directory with ``images/`` and ``masks/``, or a ``.csv`` file.
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if root.is_file() and root.suffix.lower() == ".csv":
            self.samples = _csv_samples(root)
        elif root.is_dir():
            self.samples = _folder_samples(root)
        else:
            raise FileNotFoundError(f"own-data source not found (expected a directory or a .csv file): {root}")
        if not self.samples:
            raise ValueError(f"no image/mask/prompt samples found in {root}")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def phrases(self) -> list[str]:
        """The prompt of every sample."""
        return [sample.prompt for sample in self.samples]

    @property
    def image_keys(self) -> list[str]:
        """The image file of every sample (samples of one image share it)."""
        return [str(sample.image_path) for sample in self.samples]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample `index`."""
        return read_image_file(self.samples[index].image_path).convert("RGB")

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) bool mask of sample `index`; raises ValueError if it does not match the image size."""
        sample = self.samples[index]
        values = np.asarray(read_image_file(sample.mask_path).convert("L"))
        with Image.open(sample.image_path) as image:  # only the header is read
            width, height = image.size
        if values.shape != (height, width):
            raise ValueError(
                f"mask {sample.mask_path} is {values.shape[1]}x{values.shape[0]} but image {sample.image_path} "
                f"is {width}x{height}"
            )
        return values >= 128 if values.max() > 1 else values > 0
