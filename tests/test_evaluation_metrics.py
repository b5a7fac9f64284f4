"""Metrics against hand-computed cases, a naive per-threshold loop, scikit-learn and SciPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import simpson as scipy_simpson
from sklearn.metrics import (
    confusion_matrix,
    jaccard_score,
    precision_score,
    recall_score,
)

from clipseg.evaluation.metrics import (
    NUM_THRESHOLDS,
    THRESHOLDS,
    BinaryScores,
    ConfusionMatrix,
    StatisticsAccumulator,
    average_precision,
    precision_recall_curve,
    simpson,
    threshold_index,
    threshold_statistics,
)


def naive_statistics(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """One comparison per threshold, as the definition reads (float32 comparison like the original)."""
    p = probabilities.astype(np.float32).ravel()
    g = targets.ravel() > 0.5
    rows = []
    for t in THRESHOLDS.astype(np.float32):
        pred = p > t
        rows.append([np.sum(pred & g), np.sum(pred & ~g), np.sum(~pred & g), np.sum(~pred & ~g)])
    return np.asarray(rows, dtype=np.int64)


def test_thresholds_are_the_49_fixed_values():
    assert NUM_THRESHOLDS == 49
    assert THRESHOLDS[0] == pytest.approx(0.02) and THRESHOLDS[-1] == pytest.approx(0.98)
    assert threshold_index(0.3) == 14 and threshold_index(0.5) == 24
    with pytest.raises(ValueError, match="49 fixed thresholds"):
        threshold_index(0.33)


def test_hand_computed_single_image():
    # 4 pixels: two foreground (p=0.9, 0.25), two background (p=0.6, 0.1).
    probabilities = torch.tensor([[0.9, 0.25, 0.6, 0.1]])
    targets = torch.tensor([[1, 1, 0, 0]])
    stats = threshold_statistics(probabilities, targets)[0].numpy()
    at = {t: stats[threshold_index(t)] for t in (0.1, 0.2, 0.3, 0.5, 0.7)}
    # p > 0.1 strictly: 0.1 itself is background.
    np.testing.assert_array_equal(at[0.1], [2, 1, 0, 1])
    np.testing.assert_array_equal(at[0.2], [2, 1, 0, 1])
    np.testing.assert_array_equal(at[0.3], [1, 1, 1, 1])
    np.testing.assert_array_equal(at[0.5], [1, 1, 1, 1])
    np.testing.assert_array_equal(at[0.7], [1, 0, 1, 2])
    scores = BinaryScores.from_statistics(stats, {"a": stats})
    assert scores.at("iou_fg", 0.3) == pytest.approx(1 / (1 + 1 + 1 + 1))
    assert scores.at("iou_bin", 0.7) == pytest.approx(0.5 * 1 / 3 + 0.5 * 2 / 4)
    assert scores.at("miou", 0.3) == pytest.approx(0.25)
    best, best_t = scores.best("iou_fg")
    assert best == pytest.approx(2 / 4) and best_t == pytest.approx(0.1)  # ties go to the lowest threshold
    # Curve points (recall, precision), both smoothed: all four pixels foreground for t < 0.1 -> (2/3, 2/5);
    # t in [0.1, 0.25) -> (2/3, 2/4); t in [0.25, 0.6) -> (1/3, 1/3); t in [0.6, 0.9) -> (1/3, 1/2);
    # t >= 0.9 predicts nothing and is left out. Sorted by recall alone; tied recalls keep the order in which
    # Python's set yields the pairs (as the released metrics.py): (2/3, 1/2) before (2/3, 2/5) here.
    recall, precision = precision_recall_curve(stats)
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    pairs = list(set([(2 / 3, 2 / 5), (2 / 3, 2 / 4), (1 / 3, 1 / 3), (1 / 3, 1 / 2)]))
    np.testing.assert_allclose(precision, [p for _, p in sorted(pairs, key=lambda x: x[0])])
    np.testing.assert_allclose(precision, [1 / 3, 1 / 2, 1 / 2, 2 / 5])
    assert scores.ap == pytest.approx(simpson(precision, recall))


def test_vectorised_statistics_match_naive_loop_with_void_pixels():
    rng = np.random.default_rng(0)
    probabilities = rng.random((3, 17, 13)).astype(np.float32)
    probabilities[0, :2] = THRESHOLDS[:26].reshape(2, 13)  # values exactly on thresholds
    targets = rng.random((3, 17, 13)) < 0.3
    valid = rng.random((3, 17, 13)) < 0.8
    stats = threshold_statistics(torch.from_numpy(probabilities), torch.from_numpy(targets), torch.from_numpy(valid))
    for b in range(3):
        keep = valid[b]
        np.testing.assert_array_equal(stats[b].numpy(), naive_statistics(probabilities[b][keep], targets[b][keep]))


def test_statistics_agree_with_scikit_learn_where_definitions_coincide():
    rng = np.random.default_rng(1)
    targets = rng.random(5000) < 0.35
    probabilities = np.clip(0.35 * targets + rng.random(5000) * 0.7, 0, 1).astype(np.float32)
    stats = threshold_statistics(torch.from_numpy(probabilities)[None], torch.from_numpy(targets)[None])[0].numpy()
    scores = BinaryScores.from_statistics(stats)
    for t in (0.1, 0.3, 0.5, 0.7):
        predicted = probabilities > np.float32(t)
        tp, fp, fn, tn = stats[threshold_index(t)]
        tn_ref, fp_ref, fn_ref, tp_ref = confusion_matrix(targets, predicted).ravel()
        assert (tp, fp, fn, tn) == (tp_ref, fp_ref, fn_ref, tn_ref)
        # Without the +1 smoothing the ratios are scikit-learn's.
        assert tp / (tp + fp) == pytest.approx(precision_score(targets, predicted), abs=1e-6)
        assert tp / (tp + fn) == pytest.approx(recall_score(targets, predicted), abs=1e-6)
        assert tp / (tp + fp + fn) == pytest.approx(jaccard_score(targets, predicted), abs=1e-6)
        # The paper's smoothed IoU_FG is smaller, by less than 1 / (1 + TP + FP + FN).
        gap = jaccard_score(targets, predicted) - scores.at("iou_fg", t)
        assert 0 < gap < 1 / (1 + tp + fp + fn)


def test_summing_is_over_the_dataset_not_averaged_per_image():
    small = torch.tensor([[0.9, 0.1]]), torch.tensor([[1, 1]])  # IoU 1/2 at 0.5
    large = torch.full((1, 100), 0.9), torch.ones(1, 100)  # IoU 1 at 0.5
    acc = StatisticsAccumulator()
    for probabilities, targets in (small, large):
        acc.add(threshold_statistics(probabilities, targets), classes=["x"])
    scores = acc.scores()
    tp, fp, fn = 101, 0, 1
    assert scores.at("iou_fg", 0.5) == pytest.approx(tp / (1 + tp + fp + fn))
    assert acc.samples == 2


def test_miou_is_the_mean_of_per_class_iou():
    acc = StatisticsAccumulator()
    stats_a = threshold_statistics(torch.tensor([[0.9, 0.9, 0.1]]), torch.tensor([[1, 0, 0]]))
    stats_b = threshold_statistics(torch.tensor([[0.9, 0.9]]), torch.tensor([[1, 1]]))
    acc.add(torch.cat([stats_a, stats_b]), classes=["a", "b"])
    scores = acc.scores()
    expected = np.mean([1 / (1 + 1 + 1), 2 / (1 + 2)])
    assert scores.at("miou", 0.5) == pytest.approx(expected)
    assert set(scores.class_iou()) == {"a", "b"}
    assert "miou_best" in scores.summary() and "miou_0.3" in scores.summary()


def test_without_classes_miou_is_unavailable():
    acc = StatisticsAccumulator()
    acc.add(threshold_statistics(torch.tensor([[0.9]]), torch.tensor([[1]])))
    scores = acc.scores()
    assert "miou_best" not in scores.summary()
    with pytest.raises(ValueError, match="per-class"):
        scores.at("miou", 0.5)


def test_simpson_matches_scipy_for_odd_counts_and_the_avg_rule_for_even():
    rng = np.random.default_rng(2)
    for n in (3, 5, 9, 21):
        x = np.sort(rng.random(n))
        y = rng.random(n)
        assert simpson(y, x) == pytest.approx(scipy_simpson(y, x=x), abs=1e-12)
    for n in (4, 6, 10):
        x = np.sort(rng.random(n))
        y = rng.random(n)
        first = scipy_simpson(y[:-1], x=x[:-1]) + 0.5 * (x[-1] - x[-2]) * (y[-1] + y[-2])
        last = 0.5 * (x[1] - x[0]) * (y[0] + y[1]) + scipy_simpson(y[1:], x=x[1:])
        assert simpson(y, x) == pytest.approx((first + last) / 2, abs=1e-12)
    assert simpson([0.3, 0.5], [0.0, 1.0]) == pytest.approx(0.4)
    assert simpson([0.7], [0.2]) == 0.0
    # Exact for quadratics on an uneven grid.
    x = np.array([0.0, 0.1, 0.5, 0.6, 1.0])
    assert simpson(x**2, x) == pytest.approx(1 / 3, abs=1e-12)


def test_ap_of_a_perfect_and_of_a_useless_predictor():
    targets = torch.zeros(1, 10000)
    targets[:, :5000] = 1
    perfect = threshold_statistics(targets * 0.99 + 0.005, targets)[0].numpy()
    # The paper's AP integrates only over the recall range the thresholds reach: a perfectly confident
    # predictor has a single curve point and AP 0.
    assert average_precision(perfect) == 0.0
    ramp = torch.cat([torch.linspace(0.51, 0.99, 5000), torch.linspace(0.01, 0.49, 5000)])[None]
    graded = threshold_statistics(ramp, targets)[0].numpy()
    # Precision ~1 from the recall of the highest threshold (~0.02) up to recall ~1.
    assert average_precision(graded) == pytest.approx(0.98, abs=0.01)
    nothing = threshold_statistics(torch.zeros(1, 10), torch.ones(1, 10))[0].numpy()
    assert np.isnan(average_precision(nothing))


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        threshold_statistics(torch.zeros(1, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="NaN"):
        threshold_statistics(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="no samples"):
        StatisticsAccumulator().scores()


def test_confusion_matrix_iou_ignores_void_and_averages_present_classes():
    target = torch.tensor([[0, 0, 1, 1, 255, 2]])
    predicted = torch.tensor([[0, 1, 1, 1, 2, 0]])
    cm = ConfusionMatrix(4)
    cm.add(ConfusionMatrix.counts(predicted, target, 4))
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == 0.0
    assert np.isnan(iou[3])
    assert cm.mean_iou([0, 1, 3]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="target labels"):
        ConfusionMatrix.counts(torch.tensor([7]), torch.tensor([7]), 4)


def test_ap_orders_tied_recalls_as_the_released_code():
    """metrics.py de-duplicates (recall, precision) pairs with a Python set and sorts by recall alone; with tied
    recalls (quantised predictions) the set's order, not precision, decides the curve and so AP."""
    targets = torch.tensor([[0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1]])
    probabilities = torch.tensor([[0.3, 0.9, 0.5, 0.1, 0.7, 0.7, 0.9, 0.1, 0.1, 0.9, 0.1, 0.5]])
    stats = threshold_statistics(probabilities, targets)[0].numpy()
    tp, fp, fn = ([int(v) for v in stats[:, k]] for k in range(3))
    made = [j for j in range(NUM_THRESHOLDS) if tp[j] + fp[j] > 0]
    pairs = set(zip([tp[j] / (1 + tp[j] + fn[j]) for j in made], [tp[j] / (1 + tp[j] + fp[j]) for j in made]))
    recalls, precisions = zip(*sorted(list(pairs), key=lambda x: x[0]))  # the released expression
    assert len(recalls) % 2 == 1  # odd: SciPy's composite Simpson is the released `simps` here
    expected = scipy_simpson(precisions, x=recalls)
    assert average_precision(stats) == pytest.approx(expected, abs=1e-15)
    by_both = sorted(pairs)
    assert scipy_simpson([p for _, p in by_both], x=[r for r, _ in by_both]) != pytest.approx(expected, abs=1e-6)
