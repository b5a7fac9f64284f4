"""The paper's segmentation metrics, computed from pixel statistics at 49 fixed thresholds.

Definitions (the original `metrics.FixedIntervalMetrics`):

- thresholds ``t`` = ``linspace(0, 1, 51)[1:-1]`` = 0.02, 0.04, ..., 0.98, applied to sigmoid probabilities; a pixel
  is predicted foreground at ``t`` when ``p > t`` (strictly, compared in float32: `clipseg.thresholds.binary_mask`,
  the rule every mask is made with);
- TP/FP/FN/TN are summed over the whole dataset per threshold (not averaged per image), and per class for mIoU;
- ``IoU_FG = TP / (1 + TP + FP + FN)``; ``IoU_BIN = (IoU_FG + TN / (1 + TN + FN + FP)) / 2``;
  ``mIoU`` = mean over classes of the per-class IoU_FG;
- AP: ``precision = TP / (1 + TP + FP)`` and ``recall = TP / (1 + TP + FN)`` at the thresholds that predict any
  foreground, de-duplicated, sorted by recall (ties in the order of a Python set, as released), integrated over recall with Simpson's rule (`simpson`);
- "best" values pick the threshold that maximises each metric on the evaluated data, as the paper does.

The ``1 +`` in every denominator is the original's smoothing: it keeps empty classes defined and makes every value
slightly smaller than the textbook ratio (e.g. scikit-learn's precision ``TP / (TP + FP)``), by less than
``1 / (1 + TP + FP)``.

Statistics are streamed: `threshold_statistics` reduces a batch of probability maps to (B, 49, 4) counts (TP, FP, FN, TN) with
one `bucketize` and one `bincount`, and `StatisticsAccumulator` keeps only per-class sums (memory independent of
the dataset size).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..thresholds import NUM_THRESHOLDS, THRESHOLDS

REPORTED_THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
"""Thresholds whose values `BinaryScores.summary` lists by name (the paper's tables use 0.1, 0.2 and 0.3)."""

_THRESHOLDS_F32 = torch.tensor(THRESHOLDS, dtype=torch.float32)


def threshold_index(threshold: float) -> int:
    """Index of `threshold` in `THRESHOLDS`; only the 49 fixed values (multiples of 0.02) are valid."""
    matches = np.flatnonzero(np.isclose(THRESHOLDS, threshold, rtol=0.0, atol=1e-9))
    if len(matches) == 0:
        raise ValueError(f"threshold {threshold} is not one of the 49 fixed thresholds 0.02, 0.04, ..., 0.98")
    return int(matches[0])


def threshold_statistics(
    probabilities: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample TP/FP/FN/TN at every threshold.

    Args:
        probabilities: (B, ...) foreground probabilities in [0, 1] (sigmoid of the logits).
        targets: (B, ...) ground truth of the same shape; values > 0.5 are foreground.
        valid: optional (B, ...) bool mask of the pixels to count (e.g. excluding VOC's 255 "void" border).

    Returns:
        int64 tensor (B, 49, 4) with (TP, FP, FN, TN) at each of `THRESHOLDS`, on the input's device.
    """
    if probabilities.shape != targets.shape:
        raise ValueError(
            f"probabilities {tuple(probabilities.shape)} and targets {tuple(targets.shape)} must have the same shape"
        )
    if valid is not None and valid.shape != probabilities.shape:
        raise ValueError(f"valid mask {tuple(valid.shape)} must have the shape of the probabilities")
    if probabilities.ndim < 1 or probabilities.shape[0] == 0:
        raise ValueError("threshold_statistics needs a non-empty batch (B, ...)")
    batch = probabilities.shape[0]
    scores = probabilities.reshape(batch, -1).float()
    if bool(torch.isnan(scores).any()):
        raise ValueError("probabilities contain NaN")
    positive = targets.reshape(batch, -1) > 0.5
    # bins[i] = number of thresholds strictly below p: the pixel is foreground at threshold j iff j < bins[i],
    # i.e. iff binary_mask(p, THRESHOLDS[j]) (p > t in float32), for all 49 thresholds in one pass.
    bins = torch.bucketize(scores, _THRESHOLDS_F32.to(scores.device), right=False)
    slots = 2 * (NUM_THRESHOLDS + 1)
    index = bins + positive.long() * (NUM_THRESHOLDS + 1)
    index = index + torch.arange(batch, device=scores.device)[:, None] * slots
    if valid is not None:
        index = index[valid.reshape(batch, -1).bool()]
    histogram = torch.bincount(index.reshape(-1), minlength=batch * slots).view(batch, 2, NUM_THRESHOLDS + 1)
    at_or_above = histogram.flip(-1).cumsum(-1).flip(-1)  # [..., b] = pixels with bin >= b
    predicted = at_or_above[..., 1:]  # foreground at threshold j: bin >= j + 1
    negatives, positives = histogram.sum(-1).unbind(1)
    tp, fp = predicted[:, 1], predicted[:, 0]
    fn = positives[:, None] - tp
    tn = negatives[:, None] - fp
    return torch.stack([tp, fp, fn, tn], dim=-1)


def simpson(y: Sequence[float] | np.ndarray, x: Sequence[float] | np.ndarray) -> float:
    """Integral of samples `y` over (sorted, possibly unevenly spaced) `x` by Simpson's rule.

    For an odd number of points this is composite Simpson over pairs of intervals (identical to
    `scipy.integrate.simpson`). For an even number it averages Simpson on the first N-1 points plus the trapezoid
    of the last interval with the trapezoid of the first interval plus Simpson on the last N-1 points: the
    ``even="avg"`` rule of ``scipy.integrate.simps``, which the paper's code called (SciPy >= 1.11 uses a different
    rule for the last interval). Zero-width intervals contribute nothing. Two points give the trapezoid, one 0.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"simpson needs 1-D x and y of the same length, got {x.shape} and {y.shape}")
    n = len(y)
    if n < 2:
        return 0.0
    if n % 2 == 1:
        return _composite_simpson(y, x)
    head = _composite_simpson(y[:-1], x[:-1]) + 0.5 * (x[-1] - x[-2]) * (y[-1] + y[-2])
    tail = 0.5 * (x[1] - x[0]) * (y[0] + y[1]) + _composite_simpson(y[1:], x[1:])
    return float((head + tail) / 2)


def _composite_simpson(y: np.ndarray, x: np.ndarray) -> float:
    """Simpson's rule over an odd number of unevenly spaced points (pairs of intervals)."""
    if len(y) < 3:
        return 0.0
    h = np.diff(x)
    h0, h1 = h[0::2], h[1::2]
    y0, y1, y2 = y[0:-2:2], y[1:-1:2], y[2::2]
    hsum, hprod = h0 + h1, h0 * h1
    ratio = np.divide(h0, h1, out=np.zeros_like(h0), where=h1 != 0)
    inverse_ratio = np.divide(1.0, ratio, out=np.zeros_like(ratio), where=ratio != 0)
    middle_weight = np.divide(hsum, hprod, out=np.zeros_like(hsum), where=hprod != 0)
    panels = hsum / 6.0 * (y0 * (2.0 - inverse_ratio) + y1 * hsum * middle_weight + y2 * (2.0 - ratio))
    return float(panels.sum())


def precision_recall_curve(statistics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The AP curve from summed (49, 4) statistics: unique (recall, precision) points sorted by recall.

    Only thresholds that predict some foreground (TP + FP > 0) contribute. Points are de-duplicated through a Python
    set and sorted by recall alone, so points with tied recalls keep the set's iteration order: the released
    metrics.py does exactly this, and on quantised predictions the order of ties changes AP.
    """
    tp, fp, fn, _ = (statistics[:, k].astype(np.float64) for k in range(4))
    made = (tp + fp) > 0
    precision = tp[made] / (1 + tp[made] + fp[made])
    recall = tp[made] / (1 + tp[made] + fn[made])
    points = list(set(zip(recall.tolist(), precision.tolist())))
    points.sort(key=lambda point: point[0])
    if not points:
        return np.zeros(0), np.zeros(0)
    recalls, precisions = zip(*points)
    return np.asarray(recalls), np.asarray(precisions)


def average_precision(statistics: np.ndarray) -> float:
    """AP from summed (49, 4) statistics; NaN when no threshold predicts any foreground (AP is undefined)."""
    recall, precision = precision_recall_curve(statistics)
    if len(recall) == 0:
        return float("nan")
    return simpson(precision, recall)


def _foreground_iou(statistics: np.ndarray) -> np.ndarray:
    tp, fp, fn = (statistics[..., k].astype(np.float64) for k in range(3))
    return tp / (1 + tp + fp + fn)


def _background_iou(statistics: np.ndarray) -> np.ndarray:
    _, fp, fn, tn = (statistics[..., k].astype(np.float64) for k in range(4))
    return tn / (1 + tn + fn + fp)


@dataclass(frozen=True)
class BinaryScores:
    """Every metric of a binary segmentation evaluation, at all 49 thresholds.

    Attributes:
        statistics: (49, 4) summed TP/FP/FN/TN.
        class_statistics: per-class (49, 4) sums (empty when no classes were given).
        iou_fg, iou_bin: (49,) IoU_FG and IoU_BIN per threshold.
        miou: (49,) mean over classes of IoU_FG, or None without classes.
        ap: average precision (NaN when nothing was ever predicted foreground).
        recall, precision: the points of the precision-recall curve AP integrates.
    """

    statistics: np.ndarray
    class_statistics: Mapping[Hashable, np.ndarray]
    iou_fg: np.ndarray
    iou_bin: np.ndarray
    miou: np.ndarray | None
    ap: float
    recall: np.ndarray
    precision: np.ndarray

    @classmethod
    def from_statistics(
        cls, statistics: np.ndarray, class_statistics: Mapping[Hashable, np.ndarray] | None = None
    ) -> BinaryScores:
        """Compute all metrics from summed (49, 4) statistics and optional per-class sums."""
        statistics = np.asarray(statistics, dtype=np.int64)
        if statistics.shape != (NUM_THRESHOLDS, 4):
            raise ValueError(f"statistics must have shape ({NUM_THRESHOLDS}, 4), got {statistics.shape}")
        class_statistics = dict(class_statistics or {})
        miou = None
        if class_statistics:
            miou = np.mean([_foreground_iou(s) for s in class_statistics.values()], axis=0)
        recall, precision = precision_recall_curve(statistics)
        return cls(
            statistics=statistics,
            class_statistics=class_statistics,
            iou_fg=_foreground_iou(statistics),
            iou_bin=(_foreground_iou(statistics) + _background_iou(statistics)) / 2,
            miou=miou,
            ap=average_precision(statistics),
            recall=recall,
            precision=precision,
        )

    def curve(self, metric: str) -> np.ndarray:
        """The (49,) values of "iou_fg", "iou_bin" or "miou" over `THRESHOLDS`."""
        if metric not in ("iou_fg", "iou_bin", "miou"):
            raise ValueError(f"unknown thresholded metric {metric!r}; expected iou_fg, iou_bin or miou")
        values = getattr(self, metric)
        if values is None:
            raise ValueError("mIoU needs per-class statistics: pass the class of every sample")
        return values

    def at(self, metric: str, threshold: float) -> float:
        """Value of a thresholded metric at one of the 49 fixed thresholds."""
        return float(self.curve(metric)[threshold_index(threshold)])

    def best(self, metric: str) -> tuple[float, float]:
        """(best value, its threshold) of a thresholded metric; ties go to the lowest threshold."""
        values = self.curve(metric)
        index = int(np.argmax(values))
        return float(values[index]), float(THRESHOLDS[index])

    def class_iou(self) -> dict[Hashable, np.ndarray]:
        """Per-class (49,) IoU_FG curves."""
        return {name: _foreground_iou(s) for name, s in self.class_statistics.items()}

    def summary(self, thresholds: Iterable[float] = REPORTED_THRESHOLDS) -> dict[str, float]:
        """Flat dict in the original's naming: ``ap``, ``fgiou_best``, ``fgiou_best_t``, ``fgiou_0.3``, ``biniou_*``,
        ``miou_*`` (mIoU keys only with classes)."""
        thresholds = tuple(thresholds)
        values: dict[str, float] = {"ap": self.ap}
        names = {"fgiou": "iou_fg", "biniou": "iou_bin"}
        if self.miou is not None:
            names["miou"] = "miou"
        for short, metric in names.items():
            best, best_threshold = self.best(metric)
            values[f"{short}_best"] = best
            values[f"{short}_best_t"] = best_threshold
            for threshold in thresholds:
                values[f"{short}_{threshold:g}"] = self.at(metric, threshold)
        return values


@dataclass
class StatisticsAccumulator:
    """Streaming sums of per-sample (49, 4) statistics, overall and per class (constant memory per class)."""

    total: np.ndarray = field(default_factory=lambda: np.zeros((NUM_THRESHOLDS, 4), dtype=np.int64))
    per_class: dict[Hashable, np.ndarray] = field(default_factory=dict)
    samples: int = 0

    def add(self, statistics: torch.Tensor | np.ndarray, classes: Sequence[Hashable] | None = None) -> None:
        """Add (B, 49, 4) per-sample statistics; `classes` (length B) enables mIoU."""
        statistics = np.asarray(torch.as_tensor(statistics).cpu(), dtype=np.int64)
        if statistics.ndim != 3 or statistics.shape[1:] != (NUM_THRESHOLDS, 4):
            raise ValueError(f"statistics must have shape (B, {NUM_THRESHOLDS}, 4), got {statistics.shape}")
        if classes is not None and len(classes) != len(statistics):
            raise ValueError(f"{len(classes)} classes given for {len(statistics)} samples")
        self.total += statistics.sum(axis=0)
        self.samples += len(statistics)
        if classes is not None:
            for sample, name in zip(statistics, classes):
                if name not in self.per_class:
                    self.per_class[name] = np.zeros((NUM_THRESHOLDS, 4), dtype=np.int64)
                self.per_class[name] += sample

    def scores(self) -> BinaryScores:
        """All metrics of what was added so far."""
        if self.samples == 0:
            raise ValueError("no samples were evaluated")
        return BinaryScores.from_statistics(self.total, self.per_class)


class ConfusionMatrix:
    """Pixel confusion matrix for multi-class (argmax) segmentation, e.g. Pascal-VOC generalized zero-shot.

    IoU of class c = confusion[c, c] / (row sum + column sum - confusion[c, c]), from counts summed over the whole
    dataset; classes that never occur in ground truth or prediction have IoU NaN and are left out of means.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @staticmethod
    def counts(
        predicted: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
    ) -> torch.Tensor:
        """(num_classes, num_classes) counts [target, predicted] of one or more label maps of equal shape."""
        if predicted.shape != target.shape:
            raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} shapes differ")
        target = target.reshape(-1).long()
        predicted = predicted.reshape(-1).long().to(target.device)
        keep = target != ignore_index
        target, predicted = target[keep], predicted[keep]
        if bool(((target < 0) | (target >= num_classes)).any()):
            raise ValueError(f"target labels must lie in 0..{num_classes - 1} or be {ignore_index}")
        flat = torch.bincount(target * num_classes + predicted, minlength=num_classes * num_classes)
        return flat.view(num_classes, num_classes)

    def add(self, counts: torch.Tensor | np.ndarray) -> None:
        """Add a (num_classes, num_classes) count matrix from `counts`."""
        counts = np.asarray(torch.as_tensor(counts).cpu(), dtype=np.int64)
        if counts.shape != self.matrix.shape:
            raise ValueError(f"count matrix must have shape {self.matrix.shape}, got {counts.shape}")
        self.matrix += counts

    def iou(self) -> np.ndarray:
        """(num_classes,) IoU per class (NaN where the class is absent from both prediction and ground truth)."""
        intersection = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, intersection / np.maximum(union, 1), np.nan)

    def mean_iou(self, classes: Sequence[int]) -> float:
        """Mean IoU over `classes`, ignoring classes with undefined IoU (NaN if none is defined)."""
        values = self.iou()[list(classes)]
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else float("nan")
