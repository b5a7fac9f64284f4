"""LVIS generalized prompts (Table 8).

Every LVIS image containing an object mapped to a generalized prompt ("sit on" -> armchair, sofa, ...) is segmented
with that prompt against the union of those objects; per group, IoU_FG (the paper's "mIoU" column was computed as
IoU_FG), mIoU over prompts and AP, best threshold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ...data.lvis import LVIS, generalized_prompt_groups
from ..engine import BinarySample, Query, Row, Runtime, binary_values, collect_examples, evaluate_binary
from ..inference import place_mask, prepare_input
from ..metrics import BinaryScores
from ..settings import ModelSpec
from .base import EvaluationProtocol, Fidelity, register


@dataclass(frozen=True)
class GeneralizedOptions:
    groups: tuple[str, ...] = ("affordances", "attributes", "meronymy")
    text_template: str = "{}"
    threshold: float = 0.5
    max_images_per_prompt: int | None = None


class LVISProtocol(EvaluationProtocol):
    """A protocol on LVIS annotations (images from COCO 2017): its dataset keys and the loaded annotations."""

    required_dataset_keys = ("annotations",)
    optional_dataset_keys = ("image_root",)

    @cached_property
    def lvis(self) -> LVIS:
        return LVIS(self.config.dataset["annotations"], self.config.dataset.get("image_root"))


@register
class LVISGeneralizedProtocol(LVISProtocol):
    name = "lvis_generalized"
    fidelity = Fidelity(
        follows=("prompts mapped to LVIS objects as listed in the paper's appendix",),
        departs=(
            "the original's LVIS loaders were not released: image resize (PIL bilinear, masks torch nearest) and "
            "image selection follow the paper's description, not verified code",
        ),
    )
    Options = GeneralizedOptions

    def validate(self, options: GeneralizedOptions) -> None:
        unknown = set(options.groups) - set(generalized_prompt_groups())
        if unknown:
            raise ValueError(f"unknown generalized prompt groups {sorted(unknown)}")

    def samples(self, group: str, options: GeneralizedOptions, stats: tuple) -> list[BinarySample]:
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
