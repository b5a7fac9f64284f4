"""`clipseg video` as a user runs it: output layout, formats, resuming, damaged inputs, interruption."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from video_fixtures import moving_square_frames, read_video, textured_frames, write_video

import clipseg
from clipseg import cli
from clipseg.predictor import Predictor
from clipseg.testing import he_init_, tiny_config
from clipseg.video import segment_video

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random model with a 64 px input (fast enough for a few hundred frames)."""
    config = dataclasses.replace(tiny_config(), image_size=64)
    model = he_init_(clipseg.CLIPSeg(config), seed=0).eval()
    directory = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """clips/square.mp4 (21 frames 96x64, a cut at frame 11) and clips/sub/odd.mkv (13 frames 65x47)."""
    root = tmp_path_factory.mktemp("clips")
    frames = moving_square_frames(11, 64, 96, noise=3.0) + textured_frames(10, 64, 96, seed=1)
    write_video(root / "square.mp4", frames)
    (root / "sub").mkdir()
    write_video(root / "sub" / "odd.mkv", moving_square_frames(13, 47, 65), codec="ffv1", pix_fmt="yuv444p")
    (root / "notes.txt").write_text("not a video, and not picked up from a folder")
    return root


def video(*args: str | Path):
    return runner.invoke(cli.app, ["video", *map(str, args)])


def test_help_lists_exactly_the_output_formats():
    result = runner.invoke(cli.app, ["video", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    choices = re.search(r"\[(frames[|\w]*)\]", result.output)
    assert choices is not None and choices.group(1) == "frames|video|overlay|rle", result.output


def test_video_writes_every_format_in_the_documented_layout_and_resumes(tmp_path, videos, model_dir):
    out = tmp_path / "out"
    args = [videos, "-p", "a red square", "-p", "sky", "-n", "blue water", "-f", "frames", "-f", "video", "-f",
            "overlay", "-f", "rle", "-o", out, "--model", model_dir, "--device", "cpu", "--smooth", "0.5"]
    result = video(*args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "square").iterdir()) == [
        "a_red_square", "a_red_square.mkv", "overlay.mp4", "rle.jsonl", "sky", "sky.mkv"]
    assert sorted(p.name for p in (out / "square" / "sky").iterdir()) == [f"{i:06d}.png" for i in range(21)]
    assert len(list((out / "sub" / "odd" / "a_red_square").glob("*.png"))) == 13
    assert Image.open(out / "sub" / "odd" / "sky" / "000012.png").size == (65, 47)
    frames, rate, size = read_video(out / "sub" / "odd" / "sky.mkv")
    assert (len(frames), size, rate) == (13, (65, 47), 25)
    assert len(read_video(out / "square" / "overlay.mp4")[0]) == 21
    assert len((out / "square" / "rle.jsonl").read_text().splitlines()) == 21
    # The masks are the library's: negative prompt applied, smoothing 0.5, threshold 0.4.
    predictor = Predictor(clipseg.load_model(model_dir))
    expected = [f.masks(0.4)[1].numpy() for f in segment_video(videos / "square.mp4", ["a red square", "sky"],
                                                               model=predictor, negative="blue water", smooth=0.5)]
    for index in (0, 11, 20):
        saved = np.asarray(Image.open(out / "square" / "sky" / f"{index:06d}.png")) > 0
        assert (saved != expected[index]).mean() < 1e-3
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = video(*args)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert "skipped" in again.stdout and "2" in again.stdout


def test_union_every_and_no_smoothing_match_the_library(tmp_path, videos, model_dir):
    out = tmp_path / "out"
    result = video(videos / "square.mp4", "-p", "a red square", "-p", "sky", "--union", "--every", "3", "--smooth",
                   "0", "-t", "0.5", "-f", "rle", "-o", out, "--model", model_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "square" / "rle.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(21))
    assert [a["prompt"] for a in records[0]["annotations"]] == ["a red square or sky"]
    predictor = Predictor(clipseg.load_model(model_dir))
    frames = list(segment_video(videos / "square.mp4", ["a red square", "sky"], model=predictor, every=3, smooth=0))
    for record, frame in zip(records, frames, strict=True):
        assert abs(record["annotations"][0]["area"] - int(frame.union(0.5).sum())) <= 2


def test_bad_videos_are_one_line_errors_and_the_rest_is_done(tmp_path, videos, model_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_video(inputs / "good.webm", moving_square_frames(8, 48, 64), codec="libvpx-vp9")
    whole = write_video(tmp_path / "whole.mkv", moving_square_frames(40, 48, 64, noise=20.0))
    (inputs / "cut.mkv").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (inputs / "text.mp4").write_text("hello\n" * 100)
    out = tmp_path / "out"
    result = video(inputs, inputs / "missing.mov", "-p", "a cup", "-f", "frames", "-f", "video", "-o", out,
                   "--model", model_dir, "--device", "cpu")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, result.stderr
    assert any("cut.mkv" in line and "truncated" in line for line in errors)
    assert any("text.mp4" in line and "not a readable video" in line for line in errors)
    assert any("missing.mov" in line for line in errors)
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["good"]
    assert len(list((out / "good" / "a_cup").glob("*.png"))) == 8
    assert not list(out.rglob(".clipseg-*"))


def test_a_stopped_run_leaves_no_partial_output_and_a_rerun_finishes(tmp_path, model_dir):
    source = write_video(tmp_path / "long.mkv", moving_square_frames(60, 64, 64, speed=1), codec="ffv1",
                         pix_fmt="yuv444p")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "clipseg", "video", str(source), "-p", "a red square", "-f", "frames", "-f",
               "video", "-o", str(out), "--model", str(model_dir), "--device", "cpu", "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    temporaries: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        temporaries = [p for p in (out / "long").glob(".clipseg-*") if p.is_dir() and any(p.iterdir())]
        if temporaries:
            break
        time.sleep(0.05)
    assert temporaries, "the run ended before it wrote a frame"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not (out / "long").exists()  # neither a final nor a temporary output
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list((out / "long" / "a_red_square").glob("*.png"))) == 60
    assert len(read_video(out / "long" / "a_red_square.mkv")[0]) == 60
