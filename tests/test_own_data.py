"""`clipseg eval --data`, calibrated thresholds written by eval and train, and used by segment and labels.

Expected numbers come from a naive loop: the Predictor's full-size probabilities of every (image, prompt) pair,
thresholded at each of the paper's 49 thresholds with numpy, pixel counts summed by hand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import clipseg
from clipseg import cli
from clipseg.data.synthetic import write_coco, write_folder
from clipseg.calibration import choose_threshold
from clipseg.evaluation.metrics import average_precision
from clipseg.testing import he_init_, tiny_config
from clipseg.thresholds import Thresholds

runner = CliRunner()
GRID = np.linspace(0, 1, 51)[1:-1]  # the paper's 49 thresholds, 0.02 ... 0.98


pytestmark = pytest.mark.usefixtures("single_thread")


def save_model(directory: Path, seed: int) -> Path:
    """A tiny He-initialised CLIPSeg run at 64 px (logits vary across pixels and prompts)."""
    config = dataclasses.replace(tiny_config("refined"), image_size=64)
    with torch.random.fork_rng(devices=[]):  # the class embedding he_init_ keeps: the same in every process
        torch.manual_seed(seed)
        model = clipseg.CLIPSeg(config)
    he_init_(model, seed=seed).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"first": save_model(root / "first", 0), "second": save_model(root / "second", 1)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Synthetic own data: images of two sizes (neither the model's 64 px), a mask per prompt."""
    root = write_folder(tmp_path_factory.mktemp("data") / "folder", 4, seed=3, size=(40, 56))
    extra = write_folder(tmp_path_factory.mktemp("extra"), 2, seed=4, size=(48, 36))
    for kind in ("images", "masks"):
        for path in (extra / kind).iterdir():
            shutil.copy(path, root / kind / path.name.replace("scene_", "tall_"))
    return root


def invoke(*args) -> object:
    return runner.invoke(cli.app, [str(a) for a in args])


def folder_pairs(root: Path) -> list[tuple[Path, str, np.ndarray]]:
    """(image, prompt, mask) read straight from the files."""
    pairs = []
    for mask_path in sorted((root / "masks").iterdir()):
        name, _, prompt = mask_path.stem.partition("__")
        mask = np.asarray(Image.open(mask_path).convert("L")) >= 128
        pairs.append((root / "images" / f"{name}.jpg", prompt, mask))
    return pairs


def naive_statistics(model_dir: Path, pairs) -> list[np.ndarray]:
    """(49, 4) TP/FP/FN/TN of each pair: p > t in float32 at the image's own size."""
    predictor = clipseg.Predictor(clipseg.load_model(model_dir))
    result = []
    for image, prompt, mask in pairs:
        predictor.set_image(image)
        probabilities = predictor.predict([prompt]).probabilities[0].numpy()
        assert probabilities.shape == mask.shape
        rows = []
        for t in GRID:
            predicted = probabilities > np.float32(t)
            rows.append([(predicted & mask).sum(), (predicted & ~mask).sum(), (~predicted & mask).sum(),
                         (~predicted & ~mask).sum()])
        result.append(np.asarray(rows, dtype=np.int64))
    return result


def expected_values(statistics: list[np.ndarray], prompts: list[str]) -> dict[str, float]:
    """The paper's metrics over a set of pairs, by hand (mIoU: prompts as classes)."""
    total = np.sum(statistics, axis=0).astype(np.float64)
    tp, fp, fn, tn = total.T
    fgiou = tp / (1 + tp + fp + fn)
    biniou = (fgiou + tn / (1 + tn + fn + fp)) / 2
    per_class = []
    for prompt in sorted(set(prompts)):
        s = np.sum([x for x, p in zip(statistics, prompts) if p == prompt], axis=0).astype(np.float64)
        per_class.append(s[:, 0] / (1 + s[:, 0] + s[:, 1] + s[:, 2]))
    miou = np.mean(per_class, axis=0)
    values = {"ap": average_precision(total)}
    for name, curve in (("fgiou", fgiou), ("miou", miou), ("biniou", biniou)):
        best = int(np.argmax(curve))
        values[f"{name}@best"] = curve[best]
        values[f"{name}@best_t"] = GRID[best]
        values[f"{name}@0.5"] = curve[24]
    return values


def test_every_number_of_two_models_matches_a_naive_computation(tmp_path, folder, models):
    # One image per forward pass is exactly the naive loop's computation; larger batches group the text encoder's
    # and decoder's rows differently, which may move a probability by float rounding (see the next test).
    out = tmp_path / "report"
    done = invoke("eval", "--data", folder, "--model", f"first={models['first']}", "--model",
                  f"second={models['second']}", "-o", out, "--write-thresholds", tmp_path / "t.json", "--batch-size", 1)
    assert done.exit_code == 0, done.output
    results = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in results["rows"]] == ["first", "second"]
    pairs = folder_pairs(folder)
    prompts = [prompt for _, prompt, _ in pairs]
    assert len(pairs) == len(list((folder / "masks").iterdir())) and len(set(prompts)) > 2
    for row in results["rows"]:
        statistics = naive_statistics(models[row["name"]], pairs)
        expected = {f"all/{k}": v for k, v in expected_values(statistics, prompts).items()}
        for prompt in set(prompts):
            chosen = [s for s, p in zip(statistics, prompts) if p == prompt]
            expected |= {f"prompt/{prompt}/{k}": v for k, v in expected_values(chosen, [prompt] * len(chosen)).items()}
        assert set(row["values"]) == set(expected)
        for key, value in expected.items():
            assert row["values"][key] == pytest.approx(value, abs=1e-9), key
        if row["name"] == "first":
            written = Thresholds.load(tmp_path / "t.json")
            assert written.model == str(models["first"]) and written.criterion == "fgiou"
            assert written.overall == pytest.approx(expected["all/fgiou@best_t"])
            assert written.prompts == pytest.approx({p: expected[f"prompt/{p}/fgiou@best_t"] for p in set(prompts)})
    assert "thresholds of 'first' (the first of 2 models)" in done.output
    report = (out / "report.md").read_text()
    assert "| first |" in report and "| second |" in report and "## Per prompt" in report
    for plot in ("precision_recall", "iou_vs_threshold", "per_image_iou", "qualitative_first", "qualitative_second"):
        assert Image.open(out / f"{plot}.png").size[0] > 100


def test_batch_size_sets_the_images_per_backbone_call(tmp_path, folder, models, monkeypatch):
    images = len(list((folder / "images").iterdir()))
    assert images == 6
    sizes = []
    original = clipseg.CLIPSeg.extract_features
    counted = lambda self, pixels: sizes.append(len(pixels)) or original(self, pixels)  # noqa: E731
    monkeypatch.setattr(clipseg.CLIPSeg, "extract_features", counted)
    statistics = {}
    for batch_size in (4, 1):
        sizes.clear()
        out = tmp_path / str(batch_size)
        done = invoke("eval", "--data", folder, "--model", models["first"], "-o", out, "--batch-size", batch_size)
        assert done.exit_code == 0, done.output
        # The images in batches of --batch-size, then the qualitative examples recomputed one by one.
        expected = [4, 2] if batch_size == 4 else [1] * images
        assert sizes[: len(expected)] == expected and set(sizes[len(expected) :]) <= {1}, sizes
        row = json.loads((out / "results.json").read_text())["rows"][0]
        statistics[batch_size] = np.asarray(row["details"]["statistics"])
    # Batching changes only float rounding (probabilities move by ~1e-6): a pixel can change sides only where its
    # probability lies that close to a threshold, so the counts differ by at most the number of such pixels.
    near = np.zeros(len(GRID), dtype=np.int64)
    predictor = clipseg.Predictor(clipseg.load_model(models["first"]))
    for image, prompt, _ in folder_pairs(folder):
        predictor.set_image(image)
        probabilities = predictor.predict([prompt]).probabilities[0].numpy()
        near += [(np.abs(probabilities - np.float32(t)) < 1e-4).sum() for t in GRID]
    changed = np.abs(statistics[4] - statistics[1])
    assert (changed[:, 0] + changed[:, 1] <= near).all()


def test_resume_coco_csv_and_image_prompts(tmp_path, folder, models, monkeypatch):
    from clipseg.evaluation.protocols import own_data

    calls = []
    original = own_data.threshold_statistics
    monkeypatch.setattr(own_data, "threshold_statistics", lambda *a: calls.append(1) or original(*a))
    coco = write_coco(tmp_path / "coco", 3, seed=5, size=(36, 44))
    out = tmp_path / "coco-report"
    first = invoke("eval", "--data", coco, "--model", models["first"], "-o", out)
    assert first.exit_code == 0, first.output
    computed = len(calls)
    results = (out / "results.json").read_text()
    again = invoke("eval", "--data", coco, "--model", models["first"], "-o", out)
    assert again.exit_code == 0 and len(calls) == computed  # every pair came from the cache
    assert (out / "results.json").read_text() == results
    # COCO: one pair per (image, category present), the category name as the prompt.
    annotations = json.loads(coco.read_text())
    names = {c["id"]: c["name"] for c in annotations["categories"]}
    pairs = {(a["image_id"], names[a["category_id"]]) for a in annotations["annotations"]}
    row = json.loads(results)["rows"][0]
    assert computed == len(pairs) == row["details"]["samples"]
    assert {k.split("/")[1] for k in row["values"] if k.startswith("prompt/")} == {p for _, p in pairs}
    assert row["name"] == str(models["first"]) and row["details"]["layout"] == "coco"

    csv = write_folder(tmp_path / "csv", 3, seed=6, size=(32, 40), as_csv=True)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], *(line.rsplit(",", 1)[0] + ",a shape" for line in lines[1:])]) + "\n")
    visual = invoke("eval", "--data", csv, "--model", models["first"], "--support-from-data", "-o", tmp_path / "v")
    assert visual.exit_code == 0, visual.output
    details = json.loads((tmp_path / "v" / "results.json").read_text())["rows"][0]["details"]
    assert details["layout"] == "csv" and details["prompt_kind"] == "visual"
    assert details["samples"] + details["skipped"] == len(list((csv.parent / "masks").iterdir()))
    assert details["samples"] > 0


def test_choosing_thresholds_by_hand():
    # Statistics of 100 foreground and 100 background pixels: TP falls and FP falls as t rises.
    tp = np.linspace(100, 0, 49).round()
    fp = np.linspace(100, 0, 49).round() ** 2 / 100
    statistics = np.stack([tp, fp, 100 - tp, 100 - fp], axis=1)
    iou = tp / (1 + tp + fp + (100 - tp))
    assert choose_threshold(statistics) == pytest.approx(GRID[np.argmax(iou)])
    precision, recall = tp / (1 + tp + fp), tp / (1 + tp + 100 - tp)
    lowest = GRID[np.flatnonzero(precision >= 0.8)[0]]
    assert choose_threshold(statistics, "precision", 0.8) == pytest.approx(lowest)
    highest = GRID[np.flatnonzero(recall >= 0.9)[-1]]
    assert choose_threshold(statistics, "recall", 0.9) == pytest.approx(highest)
    assert choose_threshold(np.zeros((49, 4)) + [0, 5, 0, 5]) is None  # no foreground: nothing to choose
    with pytest.raises(ValueError, match="needs a target"):
        choose_threshold(statistics, "precision")


def test_precision_criterion_from_the_command_line(tmp_path, folder, models):
    out = tmp_path / "p"
    done = invoke("eval", "--data", folder, "--model", models["second"], "-o", out, "--write-thresholds",
                  tmp_path / "p.json", "--threshold-criterion", "precision", "--threshold-target", "0.05")
    assert done.exit_code == 0, done.output
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["criterion"] == "precision" and written["target"] == 0.05
    statistics = np.asarray(json.loads((out / "results.json").read_text())["rows"][0]["details"]["statistics"])
    tp, fp = statistics[:, 0], statistics[:, 1]
    reached = np.flatnonzero(tp / (1 + tp + fp) >= 0.05)
    expected = GRID[reached[0]] if len(reached) else GRID[np.argmax(tp / (1 + tp + fp))]
    assert written["overall"] == pytest.approx(expected)
    lonely = invoke("eval", "--data", folder, "--threshold-target", "0.9")
    assert lonely.exit_code == 2 and "--threshold-target goes with" in lonely.output
    both = invoke("eval", "configs/eval/table3_phrasecut.yaml", "--data", folder)
    assert both.exit_code == 2 and "not both" in both.output
    config_only = invoke("eval", "configs/eval/table3_phrasecut.yaml", "--support-from-data")
    assert config_only.exit_code == 2 and "--support-from-data applies to --data" in config_only.output


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photo")
    write_folder(folder, 1, seed=9, size=(44, 52))
    return next((folder / "images").iterdir())


def saved_masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) > 127 for p in out.rglob("*.png")}


def test_segment_with_a_thresholds_file_and_the_model_default(tmp_path, photo, models):
    thresholds = Thresholds(overall=0.5, prompts={"a cup": 0.02, "a dog": 0.98}).save(tmp_path / "t.json")
    done = invoke("segment", photo, "-p", "a cup", "-p", "a dog", "-p", "a cat", "-m", models["first"],
                  "--threshold", thresholds, "-o", tmp_path / "out")
    assert done.exit_code == 0, done.output
    assert f"threshold 0.02 for 'a cup' (its own in {thresholds})" in done.output
    assert f"threshold 0.50 for 'a cat' (the overall threshold of {thresholds})" in done.output
    predictor = clipseg.Predictor(clipseg.load_model(models["first"]))
    predictor.set_image(photo)
    probabilities = predictor.predict(["a cup", "a dog", "a cat"]).probabilities.numpy()
    masks = saved_masks(tmp_path / "out")
    stem = photo.stem
    expected = {"a_cup": probabilities[0] > 0.02, "a_dog": probabilities[1] > 0.98, "a_cat": probabilities[2] > 0.5}
    for name, mask in expected.items():
        (saved,) = [m for file, m in masks.items() if file.startswith(stem) and name in file]
        assert np.array_equal(saved, mask), name
    assert expected["a_cup"].mean() > expected["a_cat"].mean() > expected["a_dog"].mean()

    calibrated = tmp_path / "calibrated"
    shutil.copytree(models["first"], calibrated)
    Thresholds(overall=0.3, prompts={"a cup": 0.9}).save(calibrated / "thresholds.json")
    default = invoke("segment", photo, "-p", "a cup", "-p", "a cat", "-m", calibrated, "-o", tmp_path / "d")
    assert default.exit_code == 0, default.output
    assert default.output.count("using the model's calibrated thresholds.json") == 1
    masks = saved_masks(tmp_path / "d")
    (cup,) = [m for f, m in masks.items() if "a_cup" in f]
    (cat,) = [m for f, m in masks.items() if "a_cat" in f]
    assert np.array_equal(cup, probabilities[0] > 0.9) and np.array_equal(cat, probabilities[2] > 0.3)
    number = invoke("segment", photo, "-p", "a cat", "-m", calibrated, "-t", "0.6", "-o", tmp_path / "n")
    assert number.exit_code == 0 and "calibrated" not in number.output
    (cat,) = saved_masks(tmp_path / "n").values()
    assert np.array_equal(cat, probabilities[2] > 0.6)

    union = invoke("segment", photo, "-p", "a cup", "-p", "a dog", "-m", models["first"], "-t", thresholds,
                   "--union", "-f", "mask", "-f", "rle", "-o", tmp_path / "u")
    assert union.exit_code == 0, union.output
    (mask,) = saved_masks(tmp_path / "u").values()
    assert np.array_equal(mask, (probabilities[0] > 0.02) | (probabilities[1] > 0.98))
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "u").rglob("*.json")]
    assert record["annotations"][0]["threshold"] == {"a cup": 0.02, "a dog": 0.98}

    labels = invoke("labels", photo, "-p", "a cup", "-p", "a cat", "-m", models["first"], "-t", thresholds,
                    "-o", tmp_path / "l")
    assert labels.exit_code == 0, labels.output
    legend = json.loads((tmp_path / "l" / "labels.json").read_text())
    assert legend["background_threshold"] == {"a cup": 0.02, "a cat": 0.5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such thresholds file"),
        ("{not json", "not valid JSON"),
        ('{"overall": 2}', "overall must be a number in [0, 1]"),
        ('{"overall": 0.4, "prompts": {"a cup": "high"}}', "prompts['a cup'] must be a number"),
        ('{"overall": 0.4, "colour": 1}', "unknown key(s) colour"),
    ],
)
def test_bad_threshold_files_are_one_line_usage_errors(tmp_path, photo, models, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    done = invoke("segment", photo, "-p", "a cup", "-m", models["first"], "-t", path, "-o", tmp_path / "o")
    assert done.exit_code == 2
    assert done.output.strip().count("\n") == 0 and str(path) in done.output and message in done.output


def test_bad_threshold_numbers(tmp_path, photo, models):
    for value in ("1.5", "-0.1", "nan"):
        done = invoke("segment", photo, "-p", "a cup", "-m", models["first"], "-t", value, "-o", tmp_path / "o")
        assert done.exit_code == 2 and "a probability in [0, 1]" in done.output, value


def test_training_exports_thresholds_chosen_on_its_validation_split(tmp_path, caplog):
    from training_fixtures import ShapesSource, shapes_dataset
    from training_fixtures import tiny_train_config as training_config

    from clipseg.data.phrasecut_plus import PhraseCutPlus
    from clipseg.training.trainer import Trainer

    validation = PhraseCutPlus(ShapesSource(5, seed=2), image_size=32, negative_prob=0.0, with_visual=False,
                               prompt_templates="fixed", crop=False)
    config = training_config(tmp_path / "run", optim={"max_iterations": 2}, run={"val_batch_size": 4})
    result = Trainer(config, train_dataset=shapes_dataset(4), val_dataset=validation).train()
    written = Thresholds.load(result.model_dir / "thresholds.json")
    assert written.model == str(result.model_dir) and clipseg.load_model(result.model_dir).thresholds == written
    # By hand: the exported model on every validation sample, statistics summed per phrase.
    model = clipseg.load_model(result.model_dir)
    per_phrase: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for index in range(len(validation)):
            sample = validation[index]
            conditional = model.encode_text(model.tokenizer([sample["text"]]).ids)
            probabilities = torch.sigmoid(model(sample["image"][None], conditional))[0, 0].numpy()
            target = sample["target"][0].numpy() > 0.5
            rows = [[(p & target).sum(), (p & ~target).sum(), (~p & target).sum(), (~p & ~target).sum()]
                    for p in (probabilities[None] > GRID.astype(np.float32)[:, None, None])]
            phrase = validation.phrases[index]
            per_phrase[phrase] = per_phrase.get(phrase, 0) + np.asarray(rows)
    def best(s):
        return GRID[np.argmax(s[:, 0] / (1 + s[:, 0] + s[:, 1] + s[:, 2]))]
    assert written.overall == pytest.approx(best(sum(per_phrase.values())))
    assert written.prompts == pytest.approx({p: best(s) for p, s in per_phrase.items() if s[0, [0, 2]].sum()})

    caplog.set_level(logging.INFO, logger="clipseg.training.trainer")
    config = training_config(tmp_path / "plain", optim={"max_iterations": 1})
    plain = Trainer(config, train_dataset=shapes_dataset(4)).train()
    assert not (plain.model_dir / "thresholds.json").exists()
    assert "no validation data (data.val): the exported model gets no thresholds.json" in caplog.text
