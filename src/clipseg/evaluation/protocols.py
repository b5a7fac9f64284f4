"""The benchmark protocols of the paper's Tables 2-9.

Each protocol reads its ``dataset`` and ``options`` mapping from the evaluation config (unknown keys are errors),
evaluates one model spec at a time and returns table rows (`clipseg.evaluation.engine.Row`). Defaults reproduce
the original code's settings:

- ``phrasecut`` (Tables 3, 9): PhraseCut test, image and mask resized to 352 x 352; the raw phrase as prompt; mIoU
  treats every sample as its own class (the original passed the sample index as the class), i.e. the mean of
  per-sample IoU. Visual prompts (Table 9): samples whose phrase occurs more than once; the support is a sample
  with the same phrase drawn uniformly (itself included, as in the original), prompt-engineered.
- ``pascal_zeroshot`` (Table 4): VOC val; for every pixel the argmax over the 20 class prompts plus a "background"
  prompt whose probability is weighted by 3 (the original ``CLIPSegMultiLabel``; set ``background_weight: null``
  for the 20 classes alone as the paper's text reads); mIoU over the seen (background included) and unseen classes
  of the JoEm/ZS3Net splits, from one confusion matrix.
- ``pascal5i`` (Tables 5, 7) and ``coco20i`` (Table 6): 4 folds x 1,000 HSNet episodes; the support image and mask
  make a visual prompt (``crop_blur_highlight``), or the class name a text prompt; each metric is computed per fold
  (mIoU over the fold's classes) and averaged over folds, as the paper did.
- ``lvis_generalized`` (Table 8): every LVIS image containing an object mapped to a generalized prompt ("sit on" ->
  armchair, sofa, ...) is segmented with that prompt against the union of those objects; per group, IoU_FG (the
  paper's "mIoU" column was computed as IoU_FG), mIoU over prompts and AP, best threshold.
- ``visual_prompt_engineering`` (Table 2): CLIP alone; ΔP(object) = P(target | highlighted) - P(target | plain),
  P = softmax over "a photo of a <name>" of the target and the other objects in the image (logit scale 100).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .config import EvalConfig, ModelSpec
from .engine import (
    BinarySample,
    Query,
    Row,
    Runtime,
    batched,
    binary_values,
    collect_examples,
    evaluate_binary,
)
from .inference import GEOMETRIES, place_mask, prepare_input, resize_labels
from .metrics import (
    BinaryScores,
    ConfusionMatrix,
    StatisticsAccumulator,
    threshold_index,
)
from .reference import TABLE2_LABELS

# fmt: off
JOEM_CLASSES: tuple[str, ...] = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# fmt: on
"""The VOC class names the original zero-shot evaluation prompted with (JoEm's list), label order."""
UNSEEN_ORDER = (10, 14, 1, 18, 8, 20, 19, 5, 9, 16)
"""ZS3Net/JoEm unseen classes, added in pairs: unseen-2 = cow, motorbike; -4 adds airplane, sofa; ... -10."""


def unseen_classes(count: int) -> list[int]:
    """1-based VOC labels unseen in the unseen-`count` split (2, 4, 6, 8 or 10)."""
    if count not in (2, 4, 6, 8, 10):
        raise ValueError(f"the zero-shot splits have 2, 4, 6, 8 or 10 unseen classes, got {count}")
    return sorted(UNSEEN_ORDER[:count])


def _parse(cls: type, raw: Mapping[str, Any], origin: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{origin}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return cls(**values)


def _check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; expected one of {GEOMETRIES}")


def _check_prompts(prompts: Sequence[str]) -> None:
    if not prompts or set(prompts) - {"text", "visual"}:
        raise ValueError(f"prompts must be a non-empty list of 'text' and/or 'visual', got {list(prompts)}")


class Protocol(ABC):
    """A benchmark protocol: dataset and option parsing, and `rows` for one model."""

    name: ClassVar[str]
    Options: ClassVar[type]
    required_dataset_keys: ClassVar[tuple[str, ...]] = ("root",)
    optional_dataset_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        allowed = set(self.required_dataset_keys) | set(self.optional_dataset_keys)
        unknown = set(config.dataset) - allowed
        if unknown:
            raise ValueError(f"dataset: unknown keys {sorted(unknown)} for {self.name}; expected {sorted(allowed)}")
        missing = [k for k in self.required_dataset_keys if not config.dataset.get(k)]
        if missing:
            raise ValueError(f"dataset: {self.name} needs {missing} (the dataset location)")
        self.options = self.options_for(None)

    def options_for(self, spec: ModelSpec | None) -> Any:
        """Protocol options with the model's overrides applied."""
        raw = {**self.config.options, **(spec.options if spec is not None else {})}
        options = _parse(self.Options, raw, "options")
        self.validate(options)
        return options

    def validate(self, options: Any) -> None:
        """Reject inconsistent options (called for the protocol and for every model's overrides)."""

    def threshold(self, spec: ModelSpec, options: Any) -> float:
        return spec.threshold if spec.threshold is not None else options.threshold

    @abstractmethod
    def rows(self, spec: ModelSpec, runtime: Runtime) -> list[Row]:
        """Evaluate one model."""


# ---- PhraseCut (Tables 3 and 9) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhraseCutOptions:
    split: str = "test"
    prompts: tuple[str, ...] = ("text",)
    text_template: str = "{}"
    visual_prompt: str = "crop_blur_highlight"
    threshold: float = 0.3
    seed: int = 0


class PhraseCutProtocol(Protocol):
    name = "phrasecut"
    Options = PhraseCutOptions

    def validate(self, options: PhraseCutOptions) -> None:
        _check_prompts(options.prompts)

    @cached_property
    def dataset(self):
        from ..data.phrasecut import PhraseCut

        try:
            return PhraseCut(self.config.dataset["root"], self.options.split)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error}: download PhraseCut with the official tool (github.com/ChenyunWu/PhraseCutDataset, "
                "python download_dataset.py) so that <root>/VGPhraseCut_v0/refer_test.json and images/ exist, or set "
                "dataset.root in the config"
            ) from None

    def _query(self, index: int, prompt: str | None, support: int | None) -> Query:
        size = self.config.image_size
        dataset = self.dataset
        image, placement = prepare_input(dataset.load_image(index), size, "squash", *self._stats)
        target = place_mask(dataset.load_mask(index), size, "squash")
        support_pair = None
        if support is not None:
            support_image, _ = prepare_input(dataset.load_image(support), size, "squash", *self._stats)
            support_pair = (support_image, place_mask(dataset.load_mask(support), size, "squash"))
        return Query(image, placement, target, None, prompt, support_pair, dataset.tasks[index].phrase)

    def samples(self, kind: str, options: PhraseCutOptions) -> list[BinarySample]:
        tasks = self.dataset.tasks
        if kind == "text":
            chosen = [(k, None) for k in range(len(tasks))]
        else:
            by_phrase: dict[str, list[int]] = {}
            for k, task in enumerate(tasks):
                by_phrase.setdefault(task.phrase, []).append(k)
            random = np.random.default_rng(options.seed)
            chosen = [
                (k, int(random.choice(by_phrase[t.phrase])))
                for k, t in enumerate(tasks)
                if len(by_phrase[t.phrase]) > 1
            ]
        samples = []
        for index, support in chosen:
            task = tasks[index]
            prompt = options.text_template.format(task.phrase) if kind == "text" else None
            samples.append(
                BinarySample(
                    key=f"{kind}/{task.task_id}",
                    group=task.task_id,
                    load=lambda i=index, p=prompt, s=support: self._query(i, p, s),
                )
            )
        return samples

    def rows(self, spec: ModelSpec, runtime: Runtime) -> list[Row]:
        options = self.options_for(spec)
        threshold = self.threshold(spec, options)
        segmenter = runtime.segmenter(spec, options.split)
        self._stats = (segmenter.mean, segmenter.std)
        values: dict[str, float] = {"t": threshold}
        details: dict[str, Any] = {}
        curves: dict[str, BinaryScores] = {}
        examples = []
        for kind in options.prompts:
            samples = runtime.limited(self.samples(kind, options))
            if not samples:
                raise ValueError(f"PhraseCut {options.split}: no samples for {kind} prompts")
            state = {"kind": kind, "options": dataclasses.asdict(options) | {"threshold": None}}
            cache = runtime.cache(spec, options.split, state, name=kind)
            scores = evaluate_binary(
                runtime,
                segmenter,
                samples,
                cache,
                description=f"{spec.name}: {kind}",
                visual_prompt=options.visual_prompt,
                geometry="squash",
            ).scores()
            values |= {f"{kind}/{k}": v for k, v in binary_values(scores, threshold).items() if k != "t"}
            details[kind] = {"samples": len(samples), **scores.summary()}
            curves[kind] = scores
            if not examples:
                examples = collect_examples(
                    segmenter, samples, self.config.qualitative, visual_prompt=options.visual_prompt, geometry="squash"
                )
        return [Row(spec.name, spec.paper_row or spec.name, values, details, curves, examples)]


# ---- one-shot: Pascal-5i (Tables 5, 7) and COCO-20i (Table 6) --------------------------------------------------


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


class OneShotProtocol(Protocol):
    """Shared loop of the one-shot benchmarks: folds of HSNet episodes, per-fold metrics averaged over folds."""

    Options = OneShotOptions

    def validate(self, options: OneShotOptions) -> None:
        if options.prompt not in ("visual", "text"):
            raise ValueError(f"prompt must be 'visual' or 'text', got {options.prompt!r}")
        _check_geometry(options.geometry)
        if not options.folds or set(options.folds) - {0, 1, 2, 3}:
            raise ValueError(f"folds must be a subset of 0..3, got {list(options.folds)}")

    @abstractmethod
    def episodes(self, fold: int, options: OneShotOptions) -> list[Any]:
        """The fold's episodes (query, support, class_id)."""

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


class Pascal5iProtocol(OneShotProtocol):
    name = "pascal5i"
    optional_dataset_keys = ("annotations", "split", "splits", "pfenet_list")

    @cached_property
    def voc(self):
        from ..data.pascal import PascalVOC, read_pfenet_list

        dataset = self.config.dataset
        ids = read_pfenet_list(dataset["pfenet_list"]) if dataset.get("pfenet_list") else None
        return PascalVOC(
            dataset["root"],
            split=dataset.get("split", "val"),
            annotations=dataset.get("annotations", "SegmentationClassAug"),
            image_ids=ids,
        )

    def episodes(self, fold: int, options: OneShotOptions) -> list[Any]:
        from pathlib import Path

        from ..data.pascal import (
            pascal5i_pairs_from_labels,
            read_hsnet_split,
            sample_episodes,
        )

        splits = self.config.dataset.get("splits")
        if splits:
            pairs = read_hsnet_split(Path(splits) / f"fold{fold}.txt")
        else:
            pairs = pascal5i_pairs_from_labels(self.voc, fold, min_pixels=options.min_pixels)
        return sample_episodes(pairs, options.episodes, seed=options.seed)

    def load_pair(self, name: str, class_id: int) -> tuple[Any, np.ndarray, np.ndarray | None]:
        from ..data.pascal import IGNORE_LABEL

        label = self.voc.load_label(name)
        return self.voc.load_image(name), label == class_id, label != IGNORE_LABEL

    def class_name(self, class_id: int, options: OneShotOptions) -> str:
        from ..data.pascal import VOC_CLASSES

        name = VOC_CLASSES[class_id - 1]
        return options.class_names.get(name, name)


class Coco20iProtocol(OneShotProtocol):
    name = "coco20i"
    optional_dataset_keys = ("split", "splits")

    @cached_property
    def coco(self):
        from ..data.coco20i import Coco20i

        return Coco20i(self.config.dataset["root"], split=self.config.dataset.get("split", "val2014"))

    def episodes(self, fold: int, options: OneShotOptions) -> list[Any]:
        from pathlib import Path

        from ..data.coco20i import (
            coco20i_classes,
            read_hsnet_coco_split,
            sample_coco_episodes,
        )

        splits = self.config.dataset.get("splits")
        if splits:
            classwise = read_hsnet_coco_split(Path(splits) / f"fold{fold}.pkl")
        else:
            classwise = self.coco.classwise_from_annotations(fold, min_pixels=options.min_pixels)
        return sample_coco_episodes(classwise, coco20i_classes(fold), options.episodes, seed=options.seed)

    def load_pair(self, name: str, class_id: int) -> tuple[Any, np.ndarray, np.ndarray | None]:
        return self.coco.load_image(name), self.coco.class_mask(name, class_id), None

    def class_name(self, class_id: int, options: OneShotOptions) -> str:
        name = self.coco.class_name(class_id)
        return options.class_names.get(name, name)


# ---- Pascal-VOC generalized zero-shot (Table 4) ----------------------------------------------------------------


@dataclass(frozen=True)
class ZeroShotOptions:
    unseen: tuple[int, ...] = (10, 4)
    class_names: tuple[str, ...] = JOEM_CLASSES
    text_template: str = "{}"
    background_prompt: str = "background"
    background_weight: float | None = 3.0


class PascalZeroShotProtocol(Protocol):
    name = "pascal_zeroshot"
    Options = ZeroShotOptions
    optional_dataset_keys = ("annotations", "split")

    def validate(self, options: ZeroShotOptions) -> None:
        for count in options.unseen:
            unseen_classes(count)
        if len(options.class_names) != 20:
            raise ValueError(f"class_names must list the 20 VOC classes in label order, got {len(options.class_names)}")

    @cached_property
    def voc(self):
        from ..data.pascal import PascalVOC

        dataset = self.config.dataset
        return PascalVOC(
            dataset["root"],
            split=dataset.get("split", "val"),
            annotations=dataset.get("annotations", "SegmentationClass"),
        )

    def _confusion(self, segmenter, image_ids: Sequence[str], options: ZeroShotOptions) -> list[torch.Tensor]:
        size = self.config.image_size
        prompts = [options.text_template.format(n) for n in options.class_names]
        with_background = options.background_weight is not None
        if with_background:
            prompts = [options.text_template.format(options.background_prompt)] + prompts
        embeddings = segmenter.text_embeddings(prompts)
        images, labels = [], []
        for image_id in image_ids:
            pixels, _ = prepare_input(self.voc.load_image(image_id), size, "squash", segmenter.mean, segmenter.std)
            images.append(pixels)
            labels.append(torch.from_numpy(resize_labels(self.voc.load_label(image_id), size).astype(np.int64)))
        count = len(prompts)
        image_index = torch.arange(len(images)).repeat_interleave(count)
        probabilities = segmenter.probabilities(torch.stack(images), embeddings.repeat(len(images), 1), image_index)
        probabilities = probabilities.view(len(images), count, size, size).cpu()
        if with_background:
            scores = probabilities.clone()
            scores[:, 0] *= options.background_weight
            predicted = scores.argmax(1)  # 0 = background, k = class k
        else:
            predicted = probabilities.argmax(1) + 1  # the 20 classes alone never predict background
        return [ConfusionMatrix.counts(p, label, 21) for p, label in zip(predicted, labels)]

    def rows(self, spec: ModelSpec, runtime: Runtime) -> list[Row]:
        options = self.options_for(spec)
        values: dict[str, float] = {}
        details: dict[str, Any] = {}
        image_ids = runtime.limited(self.voc.image_ids)
        for count in options.unseen:
            task = f"unseen-{count}"
            segmenter = runtime.segmenter(spec, task)
            state = {"options": dataclasses.asdict(options) | {"unseen": None}}
            cache = runtime.cache(spec, task, state, name="confusion")
            matrix = ConfusionMatrix(21)
            done = set()
            wanted = set(image_ids)
            with runtime.bar(f"{spec.name}: {task}", len(image_ids)) as advance:
                for key, arrays in cache.completed():
                    if key in wanted and key not in done:
                        matrix.add(arrays["confusion"])
                        done.add(key)
                        advance(1)
                pending = [i for i in image_ids if i not in done]
                try:
                    for batch in batched(pending, max(1, self.config.batch_size // 4)):
                        for image_id, counts in zip(batch, self._confusion(segmenter, batch, options)):
                            matrix.add(counts)
                            cache.put(image_id, {"confusion": counts.numpy()})
                        advance(len(batch))
                finally:
                    cache.flush()
            unseen = unseen_classes(count)
            seen = [c for c in range(21) if c not in unseen]
            seen_iou, unseen_iou = matrix.mean_iou(seen), matrix.mean_iou(unseen)
            harmonic = 2 * seen_iou * unseen_iou / (seen_iou + unseen_iou) if seen_iou + unseen_iou > 0 else 0.0
            values |= {f"{task}/seen": seen_iou, f"{task}/unseen": unseen_iou}
            names = ("background",) + tuple(options.class_names)
            details[task] = {
                "seen": seen_iou,
                "unseen": unseen_iou,
                "harmonic": harmonic,
                "overall": matrix.mean_iou(range(21)),
                "unseen_classes": [names[c] for c in unseen],
                "class_iou": {names[c]: float(v) for c, v in enumerate(matrix.iou())},
            }
        return [Row(spec.name, spec.paper_row or spec.name, values, details)]


# ---- LVIS generalized prompts (Table 8) --------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneralizedOptions:
    groups: tuple[str, ...] = ("affordances", "attributes", "meronymy")
    text_template: str = "{}"
    threshold: float = 0.5
    max_images_per_prompt: int | None = None


class LVISGeneralizedProtocol(Protocol):
    name = "lvis_generalized"
    Options = GeneralizedOptions
    required_dataset_keys = ("annotations",)
    optional_dataset_keys = ("image_root",)

    def validate(self, options: GeneralizedOptions) -> None:
        from ..data.lvis import generalized_prompt_groups

        unknown = set(options.groups) - set(generalized_prompt_groups())
        if unknown:
            raise ValueError(f"unknown generalized prompt groups {sorted(unknown)}")

    @cached_property
    def lvis(self):
        from ..data.lvis import LVIS

        return LVIS(self.config.dataset["annotations"], self.config.dataset.get("image_root"))

    def samples(self, group: str, options: GeneralizedOptions, stats: tuple) -> list[BinarySample]:
        from ..data.lvis import generalized_prompt_groups

        samples = []
        for prompt, objects in generalized_prompt_groups()[group].items():
            found, missing = self.lvis.category_ids(objects)
            if not found:
                raise ValueError(f"{self.lvis.path}: none of the objects of {prompt!r} are LVIS categories: {missing}")
            ids = set(found.values())
            images = sorted(
                i for i, anns in self.lvis.annotations_by_image.items() if any(a.category_id in ids for a in anns)
            )
            if options.max_images_per_prompt is not None:
                images = images[: options.max_images_per_prompt]
            text = options.text_template.format(prompt)
            samples += [
                BinarySample(
                    f"{group}/{prompt}/{i}", prompt, lambda i=i, c=frozenset(ids), t=text: self._query(i, c, t, stats)
                )
                for i in images
            ]
        return samples

    def _query(self, image_id: int, category_ids: frozenset[int], prompt: str, stats: tuple) -> Query:
        size = self.config.image_size
        image, placement = prepare_input(self.lvis.load_image(image_id), size, "squash", *stats)
        target = place_mask(self.lvis.category_mask(image_id, category_ids), size, "squash")
        return Query(image, placement, target, None, prompt, None, prompt)

    def rows(self, spec: ModelSpec, runtime: Runtime) -> list[Row]:
        options = self.options_for(spec)
        threshold = self.threshold(spec, options)
        values: dict[str, float] = {"t": threshold}
        details: dict[str, Any] = {}
        curves: dict[str, BinaryScores] = {}
        examples = []
        for group in options.groups:
            segmenter = runtime.segmenter(spec, group)
            samples = runtime.limited(self.samples(group, options, (segmenter.mean, segmenter.std)))
            state = {"group": group, "options": dataclasses.asdict(options) | {"threshold": None, "groups": None}}
            cache = runtime.cache(spec, group, state, name=group)
            scores = evaluate_binary(
                runtime,
                segmenter,
                samples,
                cache,
                description=f"{spec.name}: {group}",
                visual_prompt="none",
                geometry="squash",
            ).scores()
            values |= {f"{group}/{k}": v for k, v in binary_values(scores, threshold).items() if k != "t"}
            details[group] = {"samples": len(samples), "prompts": sorted(scores.class_statistics), **scores.summary()}
            curves[group] = scores
            if not examples:
                examples = collect_examples(
                    segmenter, samples, self.config.qualitative, visual_prompt="none", geometry="squash"
                )
        return [Row(spec.name, spec.paper_row or spec.name, values, details, curves, examples)]


# ---- visual prompt engineering (Table 2) -------------------------------------------------------------------------


# fmt: off
TABLE2_VARIANTS = (
    "cls_mask_last", "cls_mask_all", "all_tokens_all_layers", "dye_red_grayscale", "red_outline", "bg_intensity_50",
    "bg_intensity_10", "bg_intensity_0", "blur", "blur_bg_intensity_10", "crop_large_context", "crop", "crop_blur",
    "crop_bg_intensity_10", "crop_blur_highlight",
)
# fmt: on


@dataclass(frozen=True)
class PromptEngineeringOptions:
    variants: tuple[str, ...] = TABLE2_VARIANTS
    samples: int = 1600
    min_names: int = 3
    min_area: float = 0.05
    text_template: str = "a photo of a {}"
    logit_scale: float = 100.0
    seed: int = 0


class VisualPromptEngineeringProtocol(Protocol):
    name = "visual_prompt_engineering"
    Options = PromptEngineeringOptions
    required_dataset_keys = ("annotations",)
    optional_dataset_keys = ("image_root",)

    def validate(self, options: PromptEngineeringOptions) -> None:
        from ..visual_prompt import VARIANTS

        unknown = set(options.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown visual prompt variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
        if options.min_names < 2:
            raise ValueError("min_names must be at least 2 (the target and one other object)")

    @cached_property
    def lvis(self):
        from ..data.lvis import LVIS

        return LVIS(self.config.dataset["annotations"], self.config.dataset.get("image_root"))

    def selection(self, options: PromptEngineeringOptions) -> list[tuple[int, Any, list[str]]]:
        """(image id, target annotation, object names with the target's first), one target per image."""
        random = np.random.default_rng(options.seed)
        candidates = []
        for image_id in sorted(self.lvis.annotations_by_image):
            annotations = self.lvis.annotations_by_image[image_id]
            names = sorted({self.lvis.category_name(a.category_id) for a in annotations})
            if len(names) < options.min_names:
                continue
            image = self.lvis.images[image_id]
            area = float(image["height"]) * float(image["width"])
            large = [a for a in annotations if a.area >= options.min_area * area]
            if large:
                target = large[int(random.integers(len(large)))]
                name = self.lvis.category_name(target.category_id)
                candidates.append((image_id, target, [name] + [n for n in names if n != name]))
        if len(candidates) > options.samples:
            keep = sorted(random.choice(len(candidates), options.samples, replace=False).tolist())
            candidates = [candidates[k] for k in keep]
        return candidates

    def _target_probabilities(self, segmenter, item, variants: Sequence[str], options) -> np.ndarray:
        from ..visual_prompt import prepare_support

        image_id, annotation, names = item
        size = self.config.image_size
        clip_size = segmenter.model.config.vision.image_size
        pixels, _ = prepare_input(self.lvis.load_image(image_id), size, "squash", segmenter.mean, segmenter.std)
        mask = place_mask(self.lvis.instance_mask(annotation), size, "squash")
        texts = segmenter.text_embeddings([options.text_template.format(n) for n in names])
        texts = F.normalize(texts.float(), dim=-1)
        result = []
        for variant in variants:
            prompt = prepare_support(pixels, mask, variant, size, mean=segmenter.mean, std=segmenter.std)
            resized = F.interpolate(
                prompt.pixel_values[None], (clip_size, clip_size), mode="bilinear", align_corners=False
            ).to(segmenter.device)
            with torch.inference_mode():
                if prompt.token_mask is None:
                    embedding = segmenter.model.encode_image(resized)
                else:
                    embedding = segmenter.model.encode_image(
                        resized,
                        token_mask=prompt.token_mask[None].to(segmenter.device),
                        token_mask_mode=prompt.token_mask_mode,
                    )
            logits = options.logit_scale * F.normalize(embedding.float(), dim=-1) @ texts.T
            result.append(float(logits.softmax(-1)[0, 0]))
        return np.asarray(result)

    def rows(self, spec: ModelSpec, runtime: Runtime) -> list[Row]:
        from ..visual_prompt import VARIANTS

        options = self.options_for(spec)
        variants = ("none",) + tuple(options.variants)
        segmenter = runtime.segmenter(spec, "lvis")
        selection = runtime.limited(self.selection(options))
        if not selection:
            raise ValueError(f"{self.lvis.path}: no image has {options.min_names} object names and a large object")
        state = {"options": dataclasses.asdict(options), "variants": variants}
        cache = runtime.cache(spec, "lvis", state, name="delta_p")
        wanted = {f"{item[0]}/{item[1].id}" for item in selection}
        probabilities: dict[str, np.ndarray] = {}
        with runtime.bar(f"{spec.name}: visual prompts", len(selection)) as advance:
            for key, arrays in cache.completed():
                if key in wanted and key not in probabilities:
                    probabilities[key] = arrays["target_probability"]
                    advance(1)
            try:
                for item in selection:
                    key = f"{item[0]}/{item[1].id}"
                    if key in probabilities:
                        continue
                    probabilities[key] = self._target_probabilities(segmenter, item, variants, options)
                    cache.put(key, {"target_probability": probabilities[key]})
                    advance(1)
            finally:
                cache.flush()
        table = np.stack([probabilities[k] for k in sorted(probabilities)])
        delta = table[:, 1:] - table[:, :1]
        rows = []
        prefix = f"{spec.name}: " if len(self.config.models) > 1 else ""
        for column, variant in enumerate(options.variants):
            label = TABLE2_LABELS.get(variant, VARIANTS[variant].description)
            rows.append(
                Row(
                    f"{prefix}{label}",
                    label,
                    {"delta_p": float(delta[:, column].mean())},
                    {
                        "variant": variant,
                        "samples": len(table),
                        "std": float(delta[:, column].std()),
                        "p_plain": float(table[:, 0].mean()),
                        "p_highlighted": float(table[:, column + 1].mean()),
                    },
                )
            )
        return rows


PROTOCOLS: dict[str, type[Protocol]] = {
    cls.name: cls
    for cls in (
        PhraseCutProtocol,
        PascalZeroShotProtocol,
        Pascal5iProtocol,
        Coco20iProtocol,
        LVISGeneralizedProtocol,
        VisualPromptEngineeringProtocol,
    )
}


def make_protocol(config: EvalConfig) -> Protocol:
    """The protocol named by `config.protocol`, with its dataset and options validated."""
    return PROTOCOLS[config.protocol](config)
