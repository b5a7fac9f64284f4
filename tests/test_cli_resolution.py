"""`clipseg segment/labels --tiles --refine guided` and `-f cutout --alpha-matting`, end to end with a tiny model on
a large odd-sized photo; the files must hold what the Python API computes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predictor_fixtures import photo, save_tiny_model
from typer.testing import CliRunner

import clipseg
from clipseg import cli
from clipseg.predictor import Predictor
from clipseg.refine import alpha_matte

runner = CliRunner()
SIZE = (601, 457)  # width, height: larger than the model input and odd, so tiles overlap unevenly


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(photo("coffee")).resize(SIZE, Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor(clipseg.load_model(model_dir))


def run(*args: str | Path):
    return runner.invoke(cli.app, [*map(str, args)])


def test_tiles_and_refine_reach_every_output_format(tmp_path, big_photo, model_dir, predictor):
    out = tmp_path / "out"
    result = run(
        "segment", big_photo, "-p", "a cup", "-p", "a spoon", "-n", "a table", "--union", "-o", out,
        "--model", model_dir, "--device", "cpu", "--tiles", "--refine", "guided",
        "-f", "mask", "-f", "soft", "-f", "heatmap", "-f", "overlay", "-f", "cutout", "-f", "rle",
    )
    assert result.exit_code == 0, result.output
    predictor.set_image(big_photo)
    expected = predictor.predict(["a cup", "a spoon"], negative="a table", tiles=True).refined(big_photo)
    union = expected.union_probability().numpy()
    stem = "coffee__a_cup_or_a_spoon"
    mask = np.asarray(Image.open(out / f"{stem}.png"))
    assert mask.shape == (SIZE[1], SIZE[0])
    np.testing.assert_array_equal(mask > 0, union > np.float32(0.4))
    soft = np.asarray(Image.open(out / f"{stem}.soft.png")).astype(int)
    assert np.abs(soft - np.round(union * 255)).max() <= 1
    for suffix in (".heatmap.jpg", ".overlay.jpg", ".cutout.png"):
        assert Image.open(out / f"{stem}{suffix}").size == SIZE
    record = json.loads((out / "coffee.rle.json").read_text())
    assert record["annotations"][0]["segmentation"]["size"] == [SIZE[1], SIZE[0]]


def test_refinement_keeps_the_mask_decision_at_the_runs_threshold(tmp_path, big_photo, model_dir, predictor):
    predictor.set_image(big_photo)
    plain = predictor.predict("a cup")
    # A threshold through the middle of this model's map, far from refine's own default pivot (0.5).
    threshold = round(float(plain.probability(0).median()), 2)
    out = tmp_path / "out"
    result = run("segment", big_photo, "-p", "a cup", "-o", out, "--model", model_dir, "--device", "cpu",
                 "--refine", "guided", "--threshold", str(threshold))
    assert result.exit_code == 0, result.output
    expected = plain.refined(big_photo, threshold=threshold).mask(0, threshold).numpy()
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(np.asarray(Image.open(out / "coffee__a_cup.png")) > 0, expected)


def test_tile_scales_alone_turn_tiling_on(tmp_path, big_photo, model_dir, predictor):
    out = tmp_path / "out"
    result = run("segment", big_photo, "-p", "a cup", "-o", out, "--model", model_dir, "--device", "cpu",
                 "--tile-scales", "2,3", "-f", "soft")
    assert result.exit_code == 0, result.output
    predictor.set_image(big_photo)
    expected = predictor.predict("a cup", tiles=(2, 3)).probability(0).numpy()
    soft = np.asarray(Image.open(out / "coffee__a_cup.soft.png")).astype(int)
    assert np.abs(soft - np.round(expected * 255)).max() <= 1


def test_alpha_matting_gives_the_cutout_pymattings_alpha(tmp_path, big_photo, model_dir, predictor):
    out = tmp_path / "out"
    result = run(
        "segment", big_photo, "-p", "a cup", "-o", out, "--model", model_dir, "--device", "cpu",
        "-f", "cutout", "--alpha-matting", "--alpha-matting-foreground", "0.6", "--alpha-matting-background", "0.3",
        "--alpha-matting-erode", "4",
    )
    assert result.exit_code == 0, result.output
    cut = Image.open(out / "coffee__a_cup.cutout.png")
    assert cut.mode == "RGBA" and cut.size == SIZE
    predictor.set_image(big_photo)
    probability = predictor.predict("a cup").probability(0).numpy()
    image = np.asarray(Image.open(big_photo).convert("RGB"))
    expected = alpha_matte(probability, image, foreground=0.6, background=0.3, erode=4)
    alpha = np.asarray(cut)[..., 3].astype(int)
    assert np.abs(alpha - np.round(expected * 255)).max() <= 1
    assert ((alpha > 0) & (alpha < 255)).any()  # a soft matte, not a binary mask


def test_labels_with_tiles_and_refine(tmp_path, big_photo, model_dir, predictor):
    out = tmp_path / "labels"
    result = run("labels", big_photo, "-p", "a cup", "-p", "a spoon", "-o", out, "--model", model_dir,
                 "--device", "cpu", "--tiles", "--refine", "guided")
    assert result.exit_code == 0, result.output
    predictor.set_image(big_photo)
    expected = predictor.predict(["a cup", "a spoon"], tiles=True).refined(big_photo).label_map(0.4).numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(out / "coffee.labels.png")), expected)


def test_alpha_matting_without_cutouts_says_so(tmp_path, big_photo, model_dir):
    result = run("segment", big_photo, "-p", "a cup", "-o", tmp_path / "out", "--model", model_dir,
                 "--device", "cpu", "--alpha-matting")
    assert result.exit_code == 0, result.output
    assert "--alpha-matting only changes cut-outs" in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tile-scales", "1"], "scale"),
        (["--tile-scales", "2,x"], "whole numbers"),
        (["--refine", "bilateral"], "bilateral"),
        (["-f", "cutout", "--alpha-matting", "--alpha-matting-foreground", "0.2", "--alpha-matting-background", "0.5"],
         "below foreground"),
        (["--tiles=2"], "--tiles"),
    ],
)
def test_bad_values_are_usage_errors(tmp_path, big_photo, model_dir, options, message):
    out = tmp_path / "out"
    result = run("segment", big_photo, "-p", "a cup", "-o", out, "--model", model_dir, *options)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_a_missing_extra_is_named(tmp_path, big_photo, model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    result = run("segment", big_photo, "-p", "a cup", "-o", tmp_path / "out", "--model", model_dir,
                 "--refine", "guided")
    assert result.exit_code == 2
    assert "clipseg[refine]" in result.output
