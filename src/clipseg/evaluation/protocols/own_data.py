"""Own labelled data (`clipseg eval --data DATA`): every model over every (image, prompt) pair of any own-data layout.

Predictions are what ``clipseg segment`` computes: a `clipseg.Predictor` at the model's input size, probabilities
upsampled to the image's own size (the size of the masks), where they are scored. Metrics are the paper's
(`clipseg.evaluation.metrics`: 49 thresholds, statistics summed over the set): IoU_FG, mIoU with the prompts as
classes, IoU_BIN and AP, over the whole set (``all/...``) and per prompt (``prompt/<prompt>/...``; within one
prompt mIoU equals IoU_FG). Text prompts go through the templates as the predictor applies them; with
``prompts: visual`` each sample's support is another image's mask of the same prompt, drawn with `seed`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ...data.labelled import LabelledSample, labelled_samples
from ..engine import Example, Row, Runtime, batched
from ..metrics import BinaryScores, StatisticsAccumulator, threshold_index, threshold_statistics
from ..settings import ModelSpec
from .base import EvaluationProtocol, register

FIXED_THRESHOLD = 0.5
"""The threshold of the ``@0.5`` values."""


@dataclass(frozen=True)
class OwnDataOptions:
    prompts: str = "text"
    templates: str = "plain"
    ensemble: bool = False
    visual_prompt: str = "crop_blur_highlight"
    seed: int = 0
    image_size: int | None = None


@dataclass(frozen=True)
class Job:
    """A sample to predict and, for visual prompts, the sample whose image and mask is the support."""

    sample: LabelledSample
    support: LabelledSample | None = None


@register
class OwnDataProtocol(EvaluationProtocol):
    name = "own_data"
    Options = OwnDataOptions
    required_dataset_keys = ("data",)
    optional_dataset_keys = ("split",)

    def validate(self, options: OwnDataOptions) -> None:
        from ...templates import TEMPLATES

        if options.prompts not in ("text", "visual"):
            raise ValueError(f"prompts must be 'text' or 'visual', got {options.prompts!r}")
        if options.templates not in TEMPLATES:
            raise ValueError(f"unknown templates {options.templates!r}; expected one of {', '.join(TEMPLATES)}")

    @cached_property
    def data(self) -> tuple[str, list[LabelledSample]]:
        """(layout, samples) of the dataset."""
        return labelled_samples(self.config.dataset["data"], split=self.config.dataset.get("split"))

    def jobs(self, options: OwnDataOptions) -> tuple[list[Job], int]:
        """The samples to evaluate, and how many were left out (visual prompts: no other image of the prompt)."""
        samples = self.data[1]
        if options.prompts == "text":
            return [Job(s) for s in samples], 0
        supports: dict[str, list[LabelledSample]] = defaultdict(list)
        for sample in samples:
            if sample.load_mask().any():  # an empty mask cannot show the object
                supports[sample.prompt].append(sample)
        random = np.random.default_rng(options.seed)
        jobs = []
        for sample in samples:
            others = [s for s in supports[sample.prompt] if s.image_key != sample.image_key]
            if others:
                jobs.append(Job(sample, others[int(random.integers(len(others)))]))
        return jobs, len(samples) - len(jobs)

    def rows(self, spec: ModelSpec, runtime: Runtime) -> list[Row]:
        from ...predictor import Predictor

        options = self.options_for(spec)
        model = runtime.segmenter(spec, "data").model
        predictor = Predictor(model, image_size=options.image_size or model.config.image_size)
        jobs, skipped = self.jobs(options)
        jobs = runtime.limited(jobs)
        if not jobs:
            raise ValueError(f"{self.config.dataset['data']}: no sample to evaluate with {options.prompts} prompts")
        state = {"options": dataclasses.asdict(options), "image_size": predictor.image_size}
        cache = runtime.cache(spec, "data", state, name=options.prompts)
        statistics = self._statistics(runtime, predictor, jobs, cache, options, spec.name)
        accumulator = StatisticsAccumulator()
        per_prompt: dict[str, StatisticsAccumulator] = defaultdict(StatisticsAccumulator)
        for job in jobs:
            values = statistics[job.sample.key][None]
            accumulator.add(values, classes=[job.sample.prompt])
            per_prompt[job.sample.prompt].add(values, classes=[job.sample.prompt])
        scores = accumulator.scores()
        values = {f"all/{k}": v for k, v in score_values(scores).items()}
        for prompt, prompt_accumulator in sorted(per_prompt.items()):
            values |= {f"prompt/{prompt}/{k}": v for k, v in score_values(prompt_accumulator.scores()).items()}
        best = scores.best("iou_fg")[1]
        ious = {job.sample.key: sample_iou(statistics[job.sample.key], best) for job in jobs}
        details: dict[str, Any] = {
            "source": spec.source_for("data"),
            "layout": self.data[0],
            "samples": len(jobs),
            "images": len({job.sample.image_key for job in jobs}),
            "skipped": skipped,
            "prompt_kind": options.prompts,
            "image_size": predictor.image_size,
            "statistics": scores.statistics,
            "prompts": {
                prompt: {"samples": a.samples, "statistics": a.total} for prompt, a in sorted(per_prompt.items())
            },
            "per_sample_iou": {"threshold": best, "values": ious},
        }
        examples = self._examples(predictor, jobs, ious, options)
        return [Row(spec.name, None, values, details, {"all": scores}, examples)]

    def _statistics(
        self, runtime: Runtime, predictor: Any, jobs: list[Job], cache: Any, options: OwnDataOptions, name: str
    ) -> dict[str, np.ndarray]:
        """Per-sample (49, 4) statistics, from the cache where present; the rest predicted image by image."""
        with runtime.bar(f"{name}: own data", len(jobs)) as advance:
            done = cache.stored({job.sample.key for job in jobs}, "statistics")
            advance(len(done))
            by_image: dict[str, list[Job]] = defaultdict(list)
            for job in jobs:
                if job.sample.key not in done:
                    by_image[str(job.sample.image)].append(job)
            try:
                for images in batched(list(by_image.values()), runtime.config.batch_size):
                    for image_jobs, image_probabilities in zip(images, self._predict(predictor, images, options)):
                        for job, probabilities in zip(image_jobs, image_probabilities):
                            mask = torch.from_numpy(_checked_mask(job.sample, probabilities.shape))
                            values = threshold_statistics(probabilities[None], mask[None])[0].numpy()
                            done[job.sample.key] = values
                            cache.put(job.sample.key, {"statistics": values})
                        advance(len(image_jobs))
            finally:
                cache.flush()
        return done

    @staticmethod
    def _predict(predictor: Any, images: Sequence[list[Job]], options: OwnDataOptions) -> list[list[torch.Tensor]]:
        """Full-size probabilities of each job, for groups of jobs that share one image each: the backbone runs
        once over all the groups' images (`eval --batch-size` images), the decoder over every image-prompt pair."""
        from ...image import load_image
        from ...prediction import Prediction
        from ...prompts import ImagePrompt

        if options.prompts == "text":
            prompts: list[Any] = [job.sample.prompt for jobs in images for job in jobs]
        else:
            prompts = [
                ImagePrompt(job.support.image, job.support.load_mask(), variant=options.visual_prompt,
                            name=job.sample.prompt)
                for jobs in images
                for job in jobs
            ]
        pictures = [load_image(jobs[0].sample.image) for jobs in images]
        with torch.inference_mode():
            features = predictor.extract_features(pictures, batch_size=len(pictures))
            conditionals = predictor.encode_prompts(prompts, templates=options.templates, ensemble=options.ensemble)
            image_index = torch.tensor([k for k, jobs in enumerate(images) for _ in jobs])
            logits = predictor.decode(features, conditionals, image_index)
        probabilities, start = [], 0
        for jobs, picture in zip(images, pictures):
            own = logits[start : start + len(jobs)]
            start += len(jobs)
            names = tuple(job.sample.prompt for job in jobs)
            prediction = Prediction(names, own, own[:0], (picture.height, picture.width))
            probabilities.append([prediction.probabilities[k] for k in range(len(jobs))])
        return probabilities

    def _examples(
        self, predictor: Any, jobs: list[Job], ious: dict[str, float], options: OwnDataOptions
    ) -> list[Example]:
        """The best and the worst samples by IoU (half the grid each), recomputed for display."""
        from ...image import load_image

        count = self.config.qualitative
        ranked = sorted(jobs, key=lambda job: (-ious[job.sample.key], job.sample.key))
        chosen = ranked[: (count + 1) // 2]
        chosen += [job for job in ranked[len(ranked) - count // 2 :] if job not in chosen]
        examples = []
        for job in chosen:
            ((probabilities,),) = self._predict(predictor, [[job]], options)
            image = np.asarray(load_image(job.sample.image))
            label = "best" if job in ranked[: (count + 1) // 2] else "worst"
            caption = f"{label}: {job.sample.image.name} / {job.sample.prompt} (IoU {ious[job.sample.key]:.2f})"
            examples.append(Example(image, probabilities.numpy(), job.sample.load_mask(), caption))
        return examples


def score_values(scores: BinaryScores) -> dict[str, float]:
    """AP, and IoU_FG, mIoU and IoU_BIN at the best threshold (with that threshold) and at 0.5."""
    values = {"ap": scores.ap}
    for short, metric in (("fgiou", "iou_fg"), ("miou", "miou"), ("biniou", "iou_bin")):
        best, best_threshold = scores.best(metric)
        values[f"{short}@best"] = best
        values[f"{short}@best_t"] = best_threshold
        values[f"{short}@{FIXED_THRESHOLD:g}"] = scores.at(metric, FIXED_THRESHOLD)
    return values


def sample_iou(statistics: np.ndarray, threshold: float) -> float:
    """One sample's IoU at `threshold`: TP / (TP + FP + FN), 1 when mask and prediction are both empty."""
    tp, fp, fn, _ = (float(v) for v in statistics[threshold_index(threshold)])
    return tp / (tp + fp + fn) if tp + fp + fn else 1.0


def _checked_mask(sample: LabelledSample, shape: tuple[int, ...]) -> np.ndarray:
    mask = sample.load_mask()
    if mask.shape != tuple(shape):
        raise ValueError(
            f"mask of {sample.image} for {sample.prompt!r} is {mask.shape[1]}x{mask.shape[0]} but the image is "
            f"{shape[1]}x{shape[0]}"
        )
    return mask

