"""The shared evaluation loop: batched inference over samples, cached per-sample results, progress, examples."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..checkpoints.load import load_model
from ..messages import one_line
from .cache import SampleCache, file_signature, fingerprint
from .settings import EvalConfig, ModelSpec
from .inference import (
    Geometry,
    Placement,
    Segmenter,
    probabilities_at_original,
)
from .metrics import BinaryScores, StatisticsAccumulator, threshold_statistics

# 2: inputs resized as the original pipelines (issue 12); results cached by version 1 are not reused.
CACHE_VERSION = 2


@dataclass
class Query:
    """One loaded binary-segmentation sample, ready for the model.

    Attributes:
        image: normalised (3, S, S) model input; `placement` says where the image sits in it.
        target: bool ground truth at the evaluation resolution; `valid` marks the pixels that count (None = all).
        prompt: the text prompt, or None for a visual prompt given by `support` = (image (3, S, S), mask (S, S)).
        support_as_input: the support image is CLIP's input as it is (no mask, no prompt engineering): the
            released PhraseCut scorer's all-zero support of a unique phrase.
        caption: a short description for the qualitative grid.
    """

    image: torch.Tensor
    placement: Placement
    target: torch.Tensor
    valid: torch.Tensor | None = None
    prompt: str | None = None
    support: tuple[torch.Tensor, torch.Tensor] | None = None
    caption: str = ""
    support_as_input: bool = False


@dataclass(frozen=True)
class BinarySample:
    """A sample id, its class (for mIoU) and how to load it."""

    key: str
    group: str
    load: Callable[[], Query]


@dataclass
class Example:
    """One row of the qualitative grid (arrays at the evaluation resolution)."""

    image: np.ndarray
    probabilities: np.ndarray
    target: np.ndarray
    caption: str
    support: np.ndarray | None = None


@dataclass
class Row:
    """One row of a results table.

    Attributes:
        name: the row label; `paper_row` names the paper's row it reproduces.
        values: column key -> value (fractions; ΔP in probability units), see `clipseg.evaluation.reference`.
        details: everything else for the JSON report (per task, per class, thresholds).
        curves: label -> pooled `BinaryScores`, for the precision-recall and IoU-vs-threshold plots.
        examples: qualitative examples.
    """

    name: str
    paper_row: str | None
    values: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, BinaryScores] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "model"


class Runtime:
    """What a protocol needs from the run: models, caches, progress bars and the run settings."""

    def __init__(self, config: EvalConfig, *, progress: Any | None = None, resume: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.resume = resume
        self._loaded: tuple[tuple, Any] | None = None
        # Samples that could not be loaded (a corrupt image, a missing file): key -> reason; left out of the scores.
        self.failed: dict[str, str] = {}

    def record_failure(self, key: str, error: BaseException) -> None:
        """Note a sample that cannot be loaded (once per key, with a warning line) and go on without it."""
        if key not in self.failed:
            self.failed[key] = one_line(error) or type(error).__name__
            warnings.warn(f"sample {key} failed and is left out: {self.failed[key]}", stacklevel=2)

    def segmenter(self, spec: ModelSpec, task: str) -> Segmenter:
        """The model of `spec` for `task` (kept loaded while consecutive tasks use the same weights)."""
        source = spec.source_for(task)
        key = (source, spec.clip, spec.extract_layers)
        if self._loaded is None or self._loaded[0] != key:
            model = load_model(source, device=self.config.device, clip=spec.clip, extract_layers=spec.extract_layers)
            self._loaded = (key, Segmenter(model, image_size=self.config.image_size))
        return self._loaded[1]

    def cache(self, spec: ModelSpec, task: str, protocol_state: dict[str, Any], *, name: str) -> SampleCache:
        """The cache `name` of one (model weights for `task`, protocol settings) combination."""
        source = spec.source_for(task)
        description = {
            "version": CACHE_VERSION,
            "protocol": self.config.protocol,
            "dataset": dict(self.config.dataset),
            "image_size": self.config.image_size,
            "model": {
                "source": source,
                "clip": spec.clip,
                "extract_layers": spec.extract_layers,
                "files": file_signature(source) if Path(source).exists() else {},
            },
            **protocol_state,
        }
        directory = (
            self.config.cache_dir
            / self.config.protocol
            / f"{_slug(spec.name)}-{_slug(name)}-{fingerprint(description)}"
        )
        return SampleCache(directory, description, enabled=self.resume)

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar; yields `advance(n)`."""
        if self.progress is None:
            yield lambda n=1: None
            return
        task_id = self.progress.add_task(description, total=total)
        try:
            yield lambda n=1: self.progress.advance(task_id, n)
        finally:
            self.progress.update(task_id, completed=total, visible=True)

    def limited(self, samples: Sequence[Any]) -> list[Any]:
        """The first `config.limit` samples (all without a limit)."""
        return list(samples if self.config.limit is None else samples[: self.config.limit])


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# What makes one sample unusable (an unreadable or missing file, a mask of the wrong size) rather than the run.
SAMPLE_ERRORS = (OSError, ValueError)


def loaded_batches(
    samples: Sequence[BinarySample],
    batch_size: int,
    workers: int,
    on_failure: Callable[[str, BaseException], None],
) -> Iterator[tuple[Sequence[BinarySample], list[Query], int]]:
    """Batches of readable samples with their loaded queries and the batch's full size; `workers` threads read the
    next batch while the model runs on the current one (at most two batches in memory). A sample that cannot be
    loaded is passed to `on_failure` and left out."""
    batches = batched(samples, batch_size)
    if workers == 0:
        for batch in batches:
            yield _readable(batch, [_attempt(s.load) for s in batch], on_failure)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = None
        for batch in batches:
            futures = [pool.submit(_attempt, s.load) for s in batch]
            if ahead is not None:
                yield _readable(ahead[0], [f.result() for f in ahead[1]], on_failure)
            ahead = (batch, futures)
        if ahead is not None:
            yield _readable(ahead[0], [f.result() for f in ahead[1]], on_failure)


def _attempt(load: Callable[[], Query]) -> Query | BaseException:
    try:
        return load()
    except SAMPLE_ERRORS as error:
        return error


def _readable(
    batch: Sequence[BinarySample], results: list[Query | BaseException], on_failure: Callable[[str, BaseException], None]
) -> tuple[list[BinarySample], list[Query], int]:
    kept, queries = [], []
    for sample, result in zip(batch, results):
        if isinstance(result, BaseException):
            on_failure(sample.key, result)
        else:
            kept.append(sample)
            queries.append(result)
    return kept, queries, len(batch)


def conditionals(segmenter: Segmenter, queries: Sequence[Query], visual_prompt: str) -> torch.Tensor:
    """Conditional vectors in query order: text prompts encoded (cached), visual supports prompt-engineered."""
    rows: list[torch.Tensor | None] = [None] * len(queries)
    text = [k for k, q in enumerate(queries) if q.prompt is not None]
    visual = [k for k, q in enumerate(queries) if q.prompt is None]
    if text:
        for k, embedding in zip(text, segmenter.text_embeddings([queries[k].prompt for k in text])):
            rows[k] = embedding
    if visual:
        missing = [k for k in visual if queries[k].support is None]
        if missing:
            raise ValueError("a query has neither a text prompt nor a support image")
        engineered = [k for k in visual if not queries[k].support_as_input]
        as_input = [k for k in visual if queries[k].support_as_input]
        if engineered:
            embeddings = segmenter.support_embeddings(
                [queries[k].support[0] for k in engineered], [queries[k].support[1] for k in engineered], visual_prompt
            )
            for k, embedding in zip(engineered, embeddings):
                rows[k] = embedding
        if as_input:
            embeddings = segmenter.image_embeddings(torch.stack([queries[k].support[0] for k in as_input]))
            for k, embedding in zip(as_input, embeddings):
                rows[k] = embedding
    return torch.stack(rows)


def predict(
    segmenter: Segmenter, queries: Sequence[Query], visual_prompt: str, geometry: Geometry
) -> list[torch.Tensor]:
    """Probabilities of each query at its evaluation resolution."""
    images = torch.stack([q.image for q in queries])
    probabilities = segmenter.probabilities(images, conditionals(segmenter, queries, visual_prompt))
    return [probabilities_at_original(p, q.placement, geometry).cpu() for p, q in zip(probabilities, queries)]


def evaluate_binary(
    runtime: Runtime,
    segmenter: Segmenter,
    samples: Sequence[BinarySample],
    cache: SampleCache,
    *,
    description: str,
    visual_prompt: str,
    geometry: Geometry,
) -> StatisticsAccumulator:
    """Streaming TP/FP/FN/TN over `samples` (class = `sample.group`), reusing and extending `cache`."""
    accumulator = StatisticsAccumulator()
    wanted = {s.key: s.group for s in samples}
    done: set[str] = set()
    with runtime.bar(description, len(samples)) as advance:
        for key, arrays in cache.completed():
            if key in wanted and key not in done:
                accumulator.add(arrays["statistics"][None], classes=[wanted[key]])
                done.add(key)
                advance(1)
        pending = [s for s in samples if s.key not in done]
        try:
            batches = loaded_batches(
                pending, runtime.config.batch_size, runtime.config.workers, runtime.record_failure
            )
            for batch, queries, size in batches:
                if not queries:
                    advance(size)
                    continue
                for sample, query, probabilities in zip(
                    batch, queries, predict(segmenter, queries, visual_prompt, geometry)
                ):
                    valid = None if query.valid is None else query.valid[None]
                    statistics = threshold_statistics(probabilities[None], query.target[None], valid)
                    accumulator.add(statistics, classes=[sample.group])
                    cache.put(sample.key, {"statistics": statistics[0].numpy()})
                advance(size)
        finally:
            cache.flush()
    return accumulator


def to_uint8_image(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (3, H, W) -> uint8 (H, W, 3) for display."""
    plain = pixels.cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (plain.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def collect_examples(
    segmenter: Segmenter, samples: Iterable[BinarySample], count: int, *, visual_prompt: str, geometry: Geometry
) -> list[Example]:
    """Predictions for the first `count` samples, for the qualitative grid."""
    loaded = (_attempt(s.load) for s in samples)
    queries = [query for query, _ in zip((q for q in loaded if not isinstance(q, BaseException)), range(count))]
    if not queries:
        return []
    examples = []
    for query, probabilities in zip(queries, predict(segmenter, queries, visual_prompt, geometry)):
        image = to_uint8_image(query.image, segmenter.mean, segmenter.std)
        height, width = query.placement.content
        image = image[:height, :width]
        if image.shape[:2] != tuple(query.target.shape):
            image = np.asarray(
                Image.fromarray(image).resize(tuple(query.target.shape)[::-1], Image.Resampling.BILINEAR)
            )
        support = None
        if query.support is not None:
            # The support image with its object mask highlighted (background dimmed).
            pixels, mask = query.support
            dim = 0.35 + 0.65 * mask.float().numpy()[..., None]
            support = (to_uint8_image(pixels, segmenter.mean, segmenter.std) * dim).astype(np.uint8)
        examples.append(
            Example(image, probabilities.numpy(), query.target.numpy().astype(bool), query.caption, support)
        )
    return examples


def binary_values(scores: BinaryScores, threshold: float) -> dict[str, float]:
    """The values every binary table draws from: at `threshold` (``@t``), at the best threshold and AP."""
    values = {"t": threshold, "ap": scores.ap}
    metrics = {"fgiou": "iou_fg", "biniou": "iou_bin"}
    if scores.miou is not None:
        metrics["miou"] = "miou"
    for short, metric in metrics.items():
        values[f"{short}@t"] = scores.at(metric, threshold)
        best, best_threshold = scores.best(metric)
        values[f"{short}@best"] = best
        values[f"{short}@best_t"] = best_threshold
    return values
