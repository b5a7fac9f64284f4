"""Calibrated per-prompt thresholds: the file format and their use by `Prediction`."""

from __future__ import annotations

import json
import re

import pytest
import torch

from clipseg.predictor import Prediction
from clipseg.thresholds import Thresholds, ThresholdsError, per_prompt


def _prediction() -> Prediction:
    # Three prompts on a 1 x 4 image, logits chosen so the probabilities are 0.1 .. 0.9 (sigmoid(logit(p)) = p).
    probabilities = torch.tensor([[[0.1, 0.35, 0.45, 0.9]], [[0.5, 0.3, 0.6, 0.2]], [[0.2, 0.4, 0.1, 0.3]]])
    logits = torch.log(probabilities / (1 - probabilities))
    return Prediction(("a cup", "a chair", "a dog"), logits, torch.zeros(0, 1, 4), (1, 4))


def test_per_prompt_thresholds_in_masks_union_and_label_map():
    prediction = _prediction()
    thresholds = Thresholds(overall=0.4, prompts={"a cup": 0.3, "a dog": 0.15})
    masks = prediction.masks(thresholds).tolist()
    assert masks == [[[False, True, True, True]], [[True, False, True, False]], [[True, True, False, True]]]
    assert prediction.mask(1, thresholds).tolist() == [[True, False, True, False]]
    assert prediction.masks({"a cup": 0.5, "a chair": 0.5, "a dog": 0.5}).tolist() == prediction.masks(0.5).tolist()
    assert prediction.union(thresholds).tolist() == [[True, True, True, True]]
    # p > t, the rule of the original CLIPSeg's metrics.py: column 0's union is exactly 0.5, so not above 0.5.
    assert prediction.union(0.5).tolist() == [[False, False, True, True]]
    # label map: argmax prompt, background where that prompt does not exceed its own threshold
    # column 0: best a chair 0.5 > 0.4 -> 2; column 1: best a dog 0.4 > 0.15 -> 3;
    # column 2: best a chair 0.6 -> 2; column 3: best a cup 0.9 -> 1
    assert prediction.label_map(thresholds).tolist() == [[2, 3, 2, 1]]
    strict = Thresholds(overall=0.55, prompts={"a cup": 0.95})
    assert prediction.label_map(strict).tolist() == [[0, 0, 2, 0]]
    assert prediction.label_map(0.45).tolist() == [[2, 0, 2, 1]]


def test_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "thresholds.json"
    Thresholds(overall=0.38, prompts={"a cup": 0.42}, model="CIDAS/clipseg-rd64-refined").save(path)
    data = json.loads(path.read_text())
    assert data == {"criterion": "fgiou", "overall": 0.38, "prompts": {"a cup": 0.42}, "model": "CIDAS/clipseg-rd64-refined"}
    loaded = Thresholds.load(path)
    assert loaded.for_prompt("a cup") == 0.42 and loaded.for_prompt("anything else") == 0.38
    cases = {
        "[1, 2]": "expected a JSON object",
        '{"prompts": {}}': "missing key 'overall'",
        '{"overall": "high"}': "overall must be a number in [0, 1], got 'high'",
        '{"overall": 0.3, "prompts": {"a": 1.5}}': "prompts['a'] must be a number in [0, 1], got 1.5",
        '{"overall": 0.3, "colour": 1}': "unknown key(s) colour",
        '{"overall": 0.3, "criterion": "luck"}': "criterion must be one of fgiou, precision, recall",
        "{not json": "not valid JSON",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ThresholdsError, match=re.escape(message)) as error:
            Thresholds.load(path)
        assert str(path) in str(error.value)
    with pytest.raises(ThresholdsError, match="no such thresholds file"):
        Thresholds.load(tmp_path / "missing.json")
    with pytest.raises(ThresholdsError, match="no threshold for prompt\\(s\\) 'b'"):
        per_prompt({"a": 0.2}, ["a", "b"])
    with pytest.raises(ThresholdsError, match="threshold must be a number in \\[0, 1\\], got nan"):
        per_prompt(float("nan"), ["a"])


def test_a_model_directory_carries_its_thresholds(tmp_path):
    import clipseg
    from clipseg.testing import random_model

    model = random_model(seed=3)
    model.save_pretrained(tmp_path / "plain")
    assert clipseg.load_model(tmp_path / "plain").thresholds is None
    model.thresholds = Thresholds(overall=0.3, prompts={"a cup": 0.55})
    model.save_pretrained(tmp_path / "calibrated")
    loaded = clipseg.load_model(tmp_path / "calibrated")
    assert loaded.thresholds == model.thresholds
    loaded.save_pretrained(tmp_path / "copy")  # save_pretrained keeps them
    assert Thresholds.load(tmp_path / "copy" / "thresholds.json") == model.thresholds
    (tmp_path / "calibrated" / "thresholds.json").write_text('{"overall": 2}')
    with pytest.raises(ThresholdsError, match="calibrated/thresholds.json: overall must be a number in"):
        clipseg.load_model(tmp_path / "calibrated")


def test_one_rule_turns_probabilities_into_masks_everywhere():
    # p > t, compared in float32: the original CLIPSeg's metrics.py counts a pixel at threshold t when
    # `p > thresh`. Logits -1e-3, 0, 1e-3 give probabilities just below, exactly at (sigmoid(0) = 0.5) and just
    # above 0.5, so by hand only the last pixel is foreground at 0.5.
    import numpy as np

    from clipseg.evaluation.metrics import threshold_index, threshold_statistics
    from clipseg.postprocess import threshold
    from clipseg.thresholds import binary_mask

    prediction = Prediction(("a cup",), torch.tensor([[[-1e-3, 0.0, 1e-3]]]), torch.zeros(0, 1, 3), (1, 3))
    probabilities = prediction.probabilities
    assert probabilities[0, 0, 1].item() == 0.5
    expected = [False, False, True]
    assert binary_mask(probabilities[0, 0], 0.5).tolist() == expected
    assert binary_mask(probabilities[0, 0].numpy(), 0.5).tolist() == expected
    assert threshold(probabilities[0].numpy(), 0.5)[0].tolist() == expected
    assert prediction.masks(0.5)[0, 0].tolist() == expected
    assert prediction.mask(0, {"a cup": 0.5})[0].tolist() == expected
    assert prediction.union(0.5)[0].tolist() == expected
    assert prediction.label_map(0.5)[0].tolist() == [0, 0, 1]
    # The metrics count by the same rule: at t = 0.5, one pixel predicted (a true positive), two not.
    tp, fp, fn, tn = threshold_statistics(probabilities, torch.ones_like(probabilities))[0, threshold_index(0.5)]
    assert (tp, fp, fn, tn) == (1, 0, 2, 0)
    # Per-prompt thresholds broadcast; a threshold is rounded to float32 like the map it is compared with.
    assert binary_mask(np.float32([0.1, 0.1]), np.array([0.1, 0.09])).tolist() == [False, True]
