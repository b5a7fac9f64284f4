"""Tiled inference and edge-aware refinement on video (issue 17 with issue 15): `segment_video(tiles=..., refine=...)`
and `clipseg video --tiles/--tile-scales/--refine`. Tiles run where the model runs; refinement comes after the
temporal smoothing, per frame, with that frame as guide. Also the output-folder lock of `clipseg video`."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner
from video_fixtures import moving_square_frames, textured_frames, write_video

import clipseg
from clipseg import cli
from clipseg.fileio import LOCK_NAME, folder_lock
from clipseg.predictor import Predictor
from clipseg.refine import refine
from clipseg.testing import he_init_, tiny_config
from clipseg.video import FramePrediction, segment_video

SIDE = 64  # the tiny model's input size: frames larger than it get tiles
HEIGHT, WIDTH = 96, 128
PROMPTS = ["a red square", "the sky"]
PIVOT = {"center": 0.5}  # the contrast step of the refinement pivots on 0.5
runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    config = dataclasses.replace(tiny_config(), image_size=SIDE)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    he_init_(clipseg.CLIPSeg(config), seed=0).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    torch.set_num_threads(1)
    return Predictor(clipseg.load_model(model_dir))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """9 frames 128x96 of a moving square (lossless, so the decoded frames are the ones written)."""
    path = tmp_path_factory.mktemp("clips") / "square.mkv"
    return write_video(path, moving_square_frames(9, HEIGHT, WIDTH, speed=6, side=24), codec="ffv1",
                       pix_fmt="yuv444p")


def test_tiles_run_per_frame_and_smoothing_averages_the_tiled_logits(clip, predictor):
    plain = list(segment_video(clip, PROMPTS, model=predictor, smooth=0.0))
    tiled = list(segment_video(clip, PROMPTS, model=predictor, smooth=0.0, tiles=2))
    assert len(tiled) == len(plain) == 9
    for frame in tiled:
        assert frame.image_size == (HEIGHT, WIDTH) and frame.probabilities.shape == (2, HEIGHT, WIDTH)
        # Each frame is what the predictor gives for that picture with the same tiles.
        (expected,) = predictor.predict_batch([frame.image], PROMPTS, tiles=2)
        torch.testing.assert_close(frame.logits, expected.logits, atol=1e-4, rtol=1e-4)
    # Tiles change the result (finer working resolution than the 64x64 global pass).
    assert tiled[0].logits.shape != plain[0].logits.shape
    assert not torch.allclose(tiled[4].probabilities, plain[4].probabilities, atol=1e-3)
    # A plain exponential average (motion_scale=inf) of the tiled logits, by hand: s*L0 + (1-s)*L1, ...
    strength = 0.6
    smoothed = list(segment_video(clip, PROMPTS, model=predictor, smooth=strength, motion_scale=math.inf, tiles=2))
    average = tiled[0].logits
    for frame, raw in zip(smoothed, tiled, strict=True):
        average = raw.logits if frame.index == 0 else strength * average + (1 - strength) * raw.logits
        torch.testing.assert_close(frame.logits, average, atol=1e-4, rtol=1e-4)


def test_each_frame_is_refined_with_itself_as_guide_and_then_smoothed(clip, predictor):
    raw = list(segment_video(clip, PROMPTS, model=predictor, smooth=0.0, every=3))
    refined = list(segment_video(clip, PROMPTS, model=predictor, smooth=0.0, every=3, refine="guided",
                                 refine_options=PIVOT))
    assert len(refined) == len(raw) == 9
    assert [f.keyframe for f in refined] == [f.keyframe for f in raw] and not raw[1].keyframe
    assert [f.index for f in refined] == list(range(9))
    by_hand = []  # refine's output for each frame's plain probabilities, the frame as guide
    for plain, frame in zip(raw, refined, strict=True):
        assert frame.image_size == (HEIGHT, WIDTH) and frame.probabilities.shape == (2, HEIGHT, WIDTH)
        maps = np.stack([refine(plain.probability(index).numpy(), plain.image, **PIVOT) for index in range(2)])
        np.testing.assert_allclose(frame.probabilities.numpy(), maps, atol=2e-4)  # up to the 1e-4 clamp
        by_hand.append(maps)
    # Interpolated frame 1 is refined with its own picture, not its keyframe's: the square has moved.
    with_keyframe_guide = refine(raw[1].probability(0).numpy(), raw[0].image, **PIVOT)
    assert np.abs(refined[1].probability(0).numpy() - with_keyframe_guide).max() > 0.1
    assert not torch.allclose(refined[4].probabilities, raw[4].probabilities, atol=1e-2)
    # Then smoothed: a plain exponential average (motion_scale=inf) of the refined maps' logits, the maps clamped
    # to [1e-4, 1 - 1e-4] as documented.
    strength = 0.6
    smoothed = list(segment_video(clip, PROMPTS, model=predictor, smooth=strength, every=3, motion_scale=math.inf,
                                  refine="guided", refine_options=PIVOT))
    average = None
    for frame, maps in zip(smoothed, by_hand, strict=True):
        logits = torch.logit(torch.from_numpy(maps).clamp(1e-4, 1 - 1e-4))
        average = logits if average is None else strength * average + (1 - strength) * logits
        torch.testing.assert_close(frame.probabilities, average.sigmoid(), atol=1e-4, rtol=1e-4)
    # A frame refined by hand stays a frame (Prediction.refined keeps the kind and its fields).
    by_method = raw[4].refined(raw[4].image, threshold=0.5)  # pivots on its threshold
    assert isinstance(by_method, FramePrediction) and (by_method.index, by_method.keyframe) == (4, raw[4].keyframe)
    np.testing.assert_allclose(by_method.probabilities.numpy(), by_hand[4], atol=1e-6)
    # Negative prompts are applied before refinement (the refined frame carries no negative logits).
    negative = next(iter(segment_video(clip, PROMPTS, model=predictor, negative="blue", smooth=0.0)))
    negative_refined = next(iter(segment_video(clip, PROMPTS, model=predictor, negative="blue", smooth=0.0,
                                               refine="guided", refine_options=PIVOT)))
    assert not torch.allclose(negative.probabilities, raw[0].probabilities, atol=1e-2)
    assert len(negative_refined.negative_logits) == 0
    for index in range(2):
        expected = refine(negative.probability(index).numpy(), negative.image, **PIVOT)
        np.testing.assert_allclose(negative_refined.probability(index).numpy(), expected, atol=2e-4)
    # Options reach the filter: another radius, another map.
    wide = next(iter(segment_video(clip, PROMPTS, model=predictor, refine="guided", refine_options={"radius": 20})))
    first = next(iter(segment_video(clip, PROMPTS, model=predictor, refine="guided")))
    assert not torch.allclose(wide.probabilities, first.probabilities, atol=1e-3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"tiles": 1}, "tile scale"),
        ({"tiles": [2, 0]}, "tile scale"),
        ({"refine": "bilateral"}, "unknown refine method 'bilateral'"),
        ({"refine": "guided", "refine_options": {"radius": -1}}, "radius"),
        ({"refine": "guided", "refine_options": {"strength": 2}}, "strength"),
        ({"refine_options": {"radius": 4}}, "need a refine method"),
    ],
)
def test_bad_tile_and_refine_arguments_fail_on_the_call(tmp_path, clip, predictor, arguments, message):
    with pytest.raises(ValueError, match=message):
        segment_video(clip, PROMPTS, model=predictor, **arguments)  # not iterated: checked before any frame


def video(*args: str | Path):
    return runner.invoke(cli.app, ["video", *map(str, args)])


def _masks(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path)) > 0 for path in sorted(folder.glob("*.png"))]


def test_cli_tiles_and_refine_keep_frames_and_match_the_library(tmp_path, clip, model_dir, predictor):
    common = [clip, "-p", "a red square", "-f", "frames", "-f", "rle", "--model", model_dir, "--device", "cpu",
              "--smooth", "0.5", "--every", "2", "-t", "0.5"]
    plain = video(*common, "-o", tmp_path / "plain")
    sharp = video(*common, "--tiles", "--refine", "guided", "-o", tmp_path / "sharp")
    scales = video(*common, "--tile-scales", "2,3", "-o", tmp_path / "scales")
    for result in (plain, sharp, scales):
        assert result.exit_code == 0, result.output
    plain_masks = _masks(tmp_path / "plain" / "square" / "a_red_square")
    sharp_masks = _masks(tmp_path / "sharp" / "square" / "a_red_square")
    scale_masks = _masks(tmp_path / "scales" / "square" / "a_red_square")
    assert len(plain_masks) == len(sharp_masks) == len(scale_masks) == 9
    assert all(mask.shape == (HEIGHT, WIDTH) for mask in sharp_masks + scale_masks)
    assert len((tmp_path / "sharp" / "square" / "rle.jsonl").read_text().splitlines()) == 9
    assert any((a != b).any() for a, b in zip(plain_masks, sharp_masks, strict=True))
    assert any((a != b).any() for a, b in zip(sharp_masks, scale_masks, strict=True))
    # The command pivots the refinement on its threshold (-t 0.5).
    library = segment_video(clip, "a red square", model=predictor, smooth=0.5, every=2, tiles=True, refine="guided",
                            refine_options=PIVOT)
    for saved, frame in zip(sharp_masks, library, strict=True):
        assert (saved != frame.mask(0, 0.5).numpy()).mean() < 1e-3


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--tile-scales", "1"], "tile scale"),
        (["--tile-scales", "2,x"], "--tile-scales takes whole numbers"),
        (["--refine", "bilateral"], "bilateral"),
    ],
)
def test_cli_bad_tile_and_refine_values_are_usage_errors(tmp_path, clip, model_dir, option, message):
    result = video(clip, "-p", "a cup", "-o", tmp_path / "out", "--model", model_dir, *option)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "square").exists()


def test_a_second_video_run_into_a_locked_folder_is_refused(tmp_path, model_dir):
    source = write_video(tmp_path / "small.mkv", textured_frames(4, 48, 64, seed=2), codec="ffv1", pix_fmt="yuv444p")
    output = tmp_path / "out"
    output.mkdir()
    args = [source, "-p", "a cup", "-o", output, "--model", model_dir, "--device", "cpu"]
    with folder_lock(output):
        result = video(*args)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another clipseg run is writing to this folder" in errors[0], result.stderr
    assert not (output / "small").exists()
    again = video(*args)  # released: the same command now runs and leaves no lock file
    assert again.exit_code == 0, again.output
    assert len(list((output / "small" / "a_cup").glob("*.png"))) == 4
    assert not (output / LOCK_NAME).exists()


def test_a_full_disk_stops_the_video_run_with_one_line(tmp_path, model_dir, monkeypatch, full_disk_after):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("one.mkv", "two.mkv"):
        write_video(inputs / name, textured_frames(3, 48, 64, seed=5), codec="ffv1", pix_fmt="yuv444p")
    calls = full_disk_after(1)  # the disk fills up after the output folder's write probe
    output = tmp_path / "out"
    result = video(inputs, "-p", "a cup", "-f", "rle", "-o", output, "--model", model_dir, "--device", "cpu")
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr  # the second video is not tried: it would fail the same way
    assert "No space left on device" in errors[0] and "rle.jsonl" in errors[0]
    assert "0 files written, 2 videos not done" in errors[0]
    assert len(calls) == 2
    assert not list(output.rglob("rle.jsonl")) and not list(output.rglob(".clipseg-*.tmp*"))
