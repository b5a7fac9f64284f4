"""Choosing thresholds on labelled data (`clipseg eval --write-thresholds`, and `clipseg train` for its export).

From summed (49, 4) TP/FP/FN/TN statistics (`clipseg.evaluation.metrics.threshold_statistics`), over the whole set
and per prompt:

- ``fgiou`` (default): the threshold of best IoU_FG = TP / (1 + TP + FP + FN) (ties: the lowest threshold);
- ``precision``: the lowest threshold whose precision TP / (1 + TP + FP) reaches the target (the most recall at
  that precision); if none does, the threshold of highest precision;
- ``recall``: the highest threshold whose recall TP / (1 + TP + FN) reaches the target (the most precision at that
  recall); if none does, the threshold of highest recall.

A prompt whose ground truth is empty in every sample has no defined optimum and gets no entry of its own (it uses
the overall threshold). Beneath both evaluation and training, which each calibrate, and importing neither.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .thresholds import CRITERIA, NUM_THRESHOLDS, THRESHOLDS, Thresholds


def choose_threshold(statistics: np.ndarray, criterion: str = "fgiou", target: float | None = None) -> float | None:
    """The threshold `criterion` picks from summed (49, 4) statistics; None when the ground truth is empty."""
    statistics = np.asarray(statistics, dtype=np.float64)
    if statistics.shape != (NUM_THRESHOLDS, 4):
        raise ValueError(f"statistics must have shape ({NUM_THRESHOLDS}, 4), got {statistics.shape}")
    _check_criterion(criterion, target)
    tp, fp, fn, _ = statistics.T
    if tp[0] + fn[0] == 0:
        return None
    if criterion == "fgiou":
        return float(THRESHOLDS[int(np.argmax(tp / (1 + tp + fp + fn)))])
    if criterion == "precision":
        precision = tp / (1 + tp + fp)
        reached = np.flatnonzero(precision >= target)
        return float(THRESHOLDS[reached[0] if len(reached) else int(np.argmax(precision))])
    recall = tp / (1 + tp + fn)
    reached = np.flatnonzero(recall >= target)
    return float(THRESHOLDS[reached[-1] if len(reached) else int(np.argmax(recall))])


def choose_thresholds(
    statistics: np.ndarray,
    per_prompt: Mapping[str, np.ndarray],
    *,
    criterion: str = "fgiou",
    target: float | None = None,
    model: str | None = None,
) -> Thresholds:
    """Overall and per-prompt thresholds by `criterion` (see the module docstring)."""
    overall = choose_threshold(statistics, criterion, target)
    if overall is None:
        raise ValueError("no foreground pixel in any ground-truth mask: there is no threshold to choose")
    prompts = {}
    for prompt, values in per_prompt.items():
        chosen = choose_threshold(values, criterion, target)
        if chosen is not None:
            prompts[prompt] = chosen
    return Thresholds(
        overall=overall,
        prompts=prompts,
        criterion=criterion,
        target=None if criterion == "fgiou" else target,
        model=model,
    )


def _check_criterion(criterion: str, target: float | None) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"threshold criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if criterion != "fgiou" and (target is None or not 0 < target <= 1):
        raise ValueError(f"criterion {criterion!r} needs a target in (0, 1], got {target!r}")
