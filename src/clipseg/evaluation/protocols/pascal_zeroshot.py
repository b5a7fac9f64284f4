"""Pascal-VOC generalized zero-shot segmentation (Table 4).

VOC val; for every pixel the argmax over the 20 class prompts plus a "background" prompt whose probability is
weighted by 3 (the original ``CLIPSegMultiLabel``; set ``background_weight: null`` for the 20 classes alone as the
paper's text reads); mIoU over the seen (background included) and unseen classes of the JoEm/ZS3Net splits, from
one confusion matrix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ...data.pascal import PascalVOC
from ..engine import SAMPLE_ERRORS, Row, Runtime, batched
from ..inference import prepare_input, resize_labels
from ..metrics import ConfusionMatrix
from ..settings import ModelSpec
from .base import EvaluationProtocol, Fidelity, register

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




@dataclass(frozen=True)
class ZeroShotOptions:
    unseen: tuple[int, ...] = (10, 4)
    class_names: tuple[str, ...] = JOEM_CLASSES
    text_template: str = "{}"
    background_prompt: str = "background"
    background_weight: float | None = 3.0


@register
class PascalZeroShotProtocol(EvaluationProtocol):
    name = "pascal_zeroshot"
    fidelity = Fidelity(
        follows=(
            "label maps resized with torch nearest (the original's transforms.Resize(NEAREST) of a label tensor)",
            "argmax over the 20 class prompts plus 'background' weighted by 3 (CLIPSegMultiLabel); seen/unseen mIoU "
            "from one confusion matrix over the JoEm/ZS3Net splits",
        ),
        departs=(
            "the image is resized with PIL bilinear: the JoEm loader the original used is not part of the release, "
            "so its exact image resize is unverified",
            "background_weight: null (the 20 classes alone) is an option matching the paper's text",
        ),
    )
    Options = ZeroShotOptions
    optional_dataset_keys = ("annotations", "split")

    def validate(self, options: ZeroShotOptions) -> None:
        for count in options.unseen:
            unseen_classes(count)
        if len(options.class_names) != 20:
            raise ValueError(f"class_names must list the 20 VOC classes in label order, got {len(options.class_names)}")

    @cached_property
    def voc(self):
        dataset = self.config.dataset
        return PascalVOC(
            dataset["root"],
            split=dataset.get("split", "val"),
            annotations=dataset.get("annotations", "SegmentationClass"),
        )

    def _confusion(
        self, segmenter, image_ids: Sequence[str], options: ZeroShotOptions, runtime: Runtime
    ) -> list[tuple[str, torch.Tensor]]:
        """(image id, confusion counts) of the readable images of `image_ids` (the others are recorded as failed)."""
        size = self.config.image_size
        prompts = [options.text_template.format(n) for n in options.class_names]
        with_background = options.background_weight is not None
        if with_background:
            prompts = [options.text_template.format(options.background_prompt)] + prompts
        embeddings = segmenter.text_embeddings(prompts)
        images, labels, readable = [], [], []
        for image_id in image_ids:
            try:
                image, label = self.voc.load_image(image_id), self.voc.load_label(image_id)
            except SAMPLE_ERRORS as error:
                runtime.record_failure(image_id, error)
                continue
            images.append(prepare_input(image, size, "squash", segmenter.mean, segmenter.std)[0])
            labels.append(torch.from_numpy(resize_labels(label, size).astype(np.int64)))
            readable.append(image_id)
        if not images:
            return []
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
        return [(i, ConfusionMatrix.counts(p, label, 21)) for i, p, label in zip(readable, predicted, labels)]

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
                        for image_id, counts in self._confusion(segmenter, batch, options, runtime):
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
