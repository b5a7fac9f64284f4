"""One-shot segmentation: Pascal-5i (Tables 5, 7) and COCO-20i (Table 6).

4 folds x 1,000 HSNet episodes; the support image and mask make a visual prompt (``crop_blur_highlight``), or the
class name a text prompt; each metric is computed per fold (mIoU over the fold's classes) and averaged over folds,
as the paper did.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.coco20i import Coco20i, coco20i_classes, read_hsnet_coco_split, sample_coco_episodes
from ...data.pascal import (
    IGNORE_LABEL,
    VOC_CLASSES,
    Episode,
    PascalVOC,
    pascal5i_pairs_from_labels,
    read_hsnet_split,
    read_pfenet_list,
    sample_episodes,
)
from ..engine import BinarySample, Query, Row, Runtime, binary_values, collect_examples, evaluate_binary
from ..inference import GEOMETRIES, place_mask, prepare_input
from ..metrics import StatisticsAccumulator, threshold_index
from ..settings import ModelSpec
from .base import EvaluationProtocol, Fidelity, register


@dataclass(frozen=True)
class OneShotOptions:
    prompt: str = "visual"
    folds: tuple[int, ...] = (0, 1, 2, 3)
    episodes: int = 1000
    seed: int = 0
    geometry: str = "letterbox"
    visual_prompt: str = "crop_blur_highlight"
    text_template: str = "a photo of a {}."
    class_names: Mapping[str, str] = field(default_factory=dict)
    threshold: float = 0.3
    min_pixels: int = 2048


class OneShotProtocol(EvaluationProtocol):
    """Shared loop of the one-shot benchmarks: folds of HSNet episodes, per-fold metrics averaged over folds."""

    Options = OneShotOptions

    def validate(self, options: OneShotOptions) -> None:
        if options.prompt not in ("visual", "text"):
            raise ValueError(f"prompt must be 'visual' or 'text', got {options.prompt!r}")
        if options.geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {options.geometry!r}; expected one of {GEOMETRIES}")
        if not options.folds or set(options.folds) - {0, 1, 2, 3}:
            raise ValueError(f"folds must be a subset of 0..3, got {list(options.folds)}")

    def episodes(self, fold: int, options: OneShotOptions) -> list[Episode]:
        """The fold's HSNet episodes, from HSNet's split files when ``dataset.splits`` is set, else from the
        annotations by PFENet's area rule."""
        splits = self.config.dataset.get("splits")
        listing = self.read_split(Path(splits), fold) if splits else self.derive_split(fold, options.min_pixels)
        return self.draw_episodes(listing, fold, options)

    @abstractmethod
    def read_split(self, folder: Path, fold: int) -> Any:
        """The fold's images per class from HSNet's split file in `folder`."""

    @abstractmethod
    def derive_split(self, fold: int, min_pixels: int) -> Any:
        """The fold's images per class from the annotations."""

    @abstractmethod
    def draw_episodes(self, listing: Any, fold: int, options: OneShotOptions) -> list[Episode]:
        """Episodes drawn from a fold's listing as HSNet's test loader draws them."""

    @abstractmethod
    def load_pair(self, name: str, class_id: int) -> tuple[Any, np.ndarray, np.ndarray | None]:
        """(PIL image, bool class mask, bool valid mask or None) of one image."""

    @abstractmethod
    def class_name(self, class_id: int, options: OneShotOptions) -> str:
        """The name a text prompt uses for a class."""

    def _query(self, episode: Any, options: OneShotOptions, stats: tuple) -> Query:
        size, geometry = self.config.image_size, options.geometry
        image, mask, valid = self.load_pair(episode.query, episode.class_id)
        pixels, placement = prepare_input(image, size, geometry, *stats)
        if geometry == "squash":
            target = place_mask(mask, size, geometry)
            valid_t = None if valid is None else place_mask(valid, size, geometry)
        else:
            target = torch.from_numpy(mask)
            valid_t = None if valid is None else torch.from_numpy(valid)
        name = self.class_name(episode.class_id, options)
        if options.prompt == "text":
            return Query(pixels, placement, target, valid_t, options.text_template.format(name), None, name)
        support_image, support_mask, _ = self.load_pair(episode.support, episode.class_id)
        support_pixels, _ = prepare_input(support_image, size, geometry, *stats)
        support = (support_pixels, place_mask(support_mask, size, geometry))
        return Query(pixels, placement, target, valid_t, None, support, f"{name} (1-shot)")

    def rows(self, spec: ModelSpec, runtime: Runtime) -> list[Row]:
        options = self.options_for(spec)
        threshold = self.threshold(spec, options)
        per_fold: dict[str, dict[str, float]] = {}
        pooled = StatisticsAccumulator()
        examples = []
        for fold in options.folds:
            segmenter = runtime.segmenter(spec, str(fold))
            stats = (segmenter.mean, segmenter.std)
            episodes = runtime.limited(self.episodes(fold, options))
            samples = [
                BinarySample(
                    f"fold{fold}/{e.index:05d}",
                    f"{fold}/{e.class_id}",
                    lambda e=e, stats=stats: self._query(e, options, stats),
                )
                for e in episodes
            ]
            state = {"fold": fold, "options": dataclasses.asdict(options) | {"threshold": None, "folds": None}}
            cache = runtime.cache(spec, str(fold), state, name=f"fold{fold}")
            accumulator = evaluate_binary(
                runtime,
                segmenter,
                samples,
                cache,
                description=f"{spec.name}: fold {fold}",
                visual_prompt=options.visual_prompt,
                geometry=options.geometry,
            )
            scores = accumulator.scores()
            per_fold[str(fold)] = binary_values(scores, threshold) | {
                "class_iou@t": {k: float(v[threshold_index(threshold)]) for k, v in scores.class_iou().items()},
            }
            pooled.total += accumulator.total
            pooled.samples += accumulator.samples
            pooled.per_class.update(accumulator.per_class)
            if not examples:
                examples = collect_examples(
                    segmenter,
                    samples,
                    self.config.qualitative,
                    visual_prompt=options.visual_prompt,
                    geometry=options.geometry,
                )
        keys = [k for k, v in next(iter(per_fold.values())).items() if isinstance(v, float)]
        values = {k: float(np.mean([fold[k] for fold in per_fold.values()])) for k in keys}
        values["t"] = threshold
        details = {"folds": per_fold, "averaged_over_folds": list(per_fold), "episodes_per_fold": len(episodes)}
        return [
            Row(spec.name, spec.paper_row or spec.name, values, details, {"pooled folds": pooled.scores()}, examples)
        ]


@register
class Pascal5iProtocol(OneShotProtocol):
    name = "pascal5i"
    fidelity = Fidelity(
        follows=(
            "geometry letterbox = PFENet's test_Resize: longer side to the input size when larger, sides floored to "
            "multiples of 8, OpenCV INTER_LINEAR (no antialiasing) on float pixels, black canvas; support masks "
            "INTER_NEAREST",
            "metrics at the original resolution as the released scorer (resize_pred): the whole predicted canvas "
            "resized to L x L (L the longer side, bilinear, align_corners=True), VOC's 255 border ignored",
            "per fold mIoU over the fold's five classes, averaged over the four folds; text prompts "
            "'a photo of a {}.' as pfe_dataset.py",
        ),
        departs=(
            "1,000 HSNet episodes per fold (the paper's protocol), from HSNet's lists or PFENet's area rule; the "
            "released scorer instead took every image of PFENet's val list once as query, with SemData's support",
            "geometry: squash (whole image resized) is an option, not the released pipeline",
        ),
    )
    optional_dataset_keys = ("annotations", "split", "splits", "pfenet_list")

    @cached_property
    def voc(self):
        dataset = self.config.dataset
        ids = read_pfenet_list(dataset["pfenet_list"]) if dataset.get("pfenet_list") else None
        return PascalVOC(
            dataset["root"],
            split=dataset.get("split", "val"),
            annotations=dataset.get("annotations", "SegmentationClassAug"),
            image_ids=ids,
        )

    def read_split(self, folder: Path, fold: int) -> list[tuple[str, int]]:
        return read_hsnet_split(folder / f"fold{fold}.txt")

    def derive_split(self, fold: int, min_pixels: int) -> list[tuple[str, int]]:
        return pascal5i_pairs_from_labels(self.voc, fold, min_pixels=min_pixels)

    def draw_episodes(self, listing: list[tuple[str, int]], fold: int, options: OneShotOptions) -> list[Episode]:
        return sample_episodes(listing, options.episodes, seed=options.seed)

    def load_pair(self, name: str, class_id: int) -> tuple[Any, np.ndarray, np.ndarray | None]:
        label = self.voc.load_label(name)
        return self.voc.load_image(name), label == class_id, label != IGNORE_LABEL

    def class_name(self, class_id: int, options: OneShotOptions) -> str:
        name = VOC_CLASSES[class_id - 1]
        return options.class_names.get(name, name)


@register
class Coco20iProtocol(OneShotProtocol):
    name = "coco20i"
    fidelity = Fidelity(
        follows=(
            "HSNet's COCO loader: image resized to the input size by torchvision's Resize of a PIL image (PIL "
            "bilinear), masks torch nearest (geometry: squash)",
            "HSNet's test episodes (numpy seed 0: class, query, a different support), fold classes fold, fold + 4, "
            "...; per fold mIoU averaged over folds",
        ),
        departs=("geometry: letterbox is an option, not the released COCO pipeline",),
    )
    optional_dataset_keys = ("split", "splits")

    @cached_property
    def coco(self):
        return Coco20i(self.config.dataset["root"], split=self.config.dataset.get("split", "val2014"))

    def read_split(self, folder: Path, fold: int) -> dict[int, list[str]]:
        return read_hsnet_coco_split(folder / f"fold{fold}.pkl")

    def derive_split(self, fold: int, min_pixels: int) -> dict[int, list[str]]:
        return self.coco.classwise_from_annotations(fold, min_pixels=min_pixels)

    def draw_episodes(self, listing: dict[int, list[str]], fold: int, options: OneShotOptions) -> list[Episode]:
        return sample_coco_episodes(listing, coco20i_classes(fold), options.episodes, seed=options.seed)

    def load_pair(self, name: str, class_id: int) -> tuple[Any, np.ndarray, np.ndarray | None]:
        return self.coco.load_image(name), self.coco.class_mask(name, class_id), None

    def class_name(self, class_id: int, options: OneShotOptions) -> str:
        name = self.coco.class_name(class_id)
        return options.class_names.get(name, name)


