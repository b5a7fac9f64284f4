"""Validation during training: BCE loss and the paper's binary metrics (IoU_FG, AP over 49 thresholds), overall
and per prompt (for the calibrated thresholds the exported model carries)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..evaluation.metrics import (
    NUM_THRESHOLDS,
    BinaryScores,
    StatisticsAccumulator,
    threshold_statistics,
)
from ..model.clipseg import CLIPSeg
from .autocast import autocast
from .conditionals import conditional_vectors
from .distributed import DistributedContext


@dataclass(frozen=True)
class ValidationResult:
    """Scores summed over all processes' shares of the validation data; `prompt_statistics` holds the summed
    (49, 4) TP/FP/FN/TN of each prompt (empty when the dataset does not name its samples' `phrases`)."""

    loss: float
    scores: BinaryScores
    samples: int
    prompt_statistics: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Flat metrics for logging: ``loss``, ``ap``, ``fgiou_best``, ``fgiou_best_t``, ``fgiou_0.3``, ..."""
        return {"loss": self.loss, **self.scores.summary()}


def evaluate(
    model: CLIPSeg,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
    num_workers: int = 0,
    distributed: DistributedContext | None = None,
) -> ValidationResult:
    """Score `model` on samples of the training contract (image, target, text, support, text_weight).

    In a distributed run each process scores every world_size-th sample and the statistics are summed, so all
    processes return the same result. The decoder's train/eval mode is restored afterwards.
    """
    distributed = distributed or DistributedContext()
    indices = range(distributed.rank, len(dataset), distributed.world_size)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
    accumulator = StatisticsAccumulator()
    # Validation samples keep their phrase (no negatives), so the dataset's `phrases` name each sample's prompt.
    phrases = getattr(dataset, "phrases", None) if getattr(dataset, "negative_prob", 0) == 0 else None
    prompts = sorted(set(phrases)) if phrases is not None else []
    slots = {prompt: slot for slot, prompt in enumerate(prompts)}
    per_prompt = torch.zeros(len(prompts), NUM_THRESHOLDS, 4, dtype=torch.int64)
    done = 0
    loss_sum = torch.zeros((), dtype=torch.float64)
    was_training = model.decoder.training
    model.decoder.eval()
    try:
        with torch.no_grad():
            for index, batch in enumerate(loader):
                if max_batches is not None and index >= max_batches:
                    break
                images = batch["image"].to(model.device)
                targets = batch["target"].to(model.device)
                with autocast(model.device, autocast_dtype):
                    logits = model(images, conditional_vectors(model, batch)).float()
                loss_sum += F.binary_cross_entropy_with_logits(logits, targets).double().cpu() * len(images)
                statistics = threshold_statistics(torch.sigmoid(logits), targets).cpu()
                accumulator.add(statistics)
                if prompts:
                    for offset, sample in enumerate(statistics):
                        per_prompt[slots[phrases[indices[done + offset]]]] += sample
                done += len(statistics)
    finally:
        model.decoder.train(was_training)
    totals = distributed.sum(torch.from_numpy(accumulator.total))
    samples = int(distributed.sum(torch.tensor(accumulator.samples)))
    loss_sum = distributed.sum(loss_sum)
    per_prompt = distributed.sum(per_prompt) if prompts else per_prompt
    if samples == 0:
        raise ValueError("the validation dataset is empty")
    return ValidationResult(
        loss=float(loss_sum) / samples,
        scores=BinaryScores.from_statistics(totals.numpy()),
        samples=samples,
        prompt_statistics={
            prompt: values.numpy() for prompt, values in zip(prompts, per_prompt) if int(values[0].sum())
        },
    )
