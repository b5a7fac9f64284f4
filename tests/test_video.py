"""clipseg.video on synthetic videos written with PyAV: frame counts, sizes, rates, rotation, the output formats,
smoothing, scene cuts, keyframe interpolation, damaged files and atomic outputs. Tiny random model throughout."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from video_fixtures import moving_square_frames, read_video, textured_frames, write_video

from clipseg.predictor import Predictor
from clipseg.testing import random_model
from clipseg.video import VideoError, VideoOutputs, VideoReader, probe, segment_video
from clipseg.video.temporal import LogitSmoother, SceneCutDetector
from clipseg.video.writers import output_paths

SIDE = 64  # the tiny model's input size


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(1)
    return Predictor(random_model(), image_size=SIDE)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """25 frames, 96x64 at 25 fps, H.264 in MP4."""
    path = tmp_path_factory.mktemp("clips") / "square.mp4"
    return write_video(path, moving_square_frames(25, 64, 96, noise=3.0))


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt", "size", "count", "rate"),
    [
        ("odd.mkv", "ffv1", "yuv444p", (65, 47), 31, Fraction(30000, 1001)),
        ("clip.webm", "libvpx-vp9", "yuv420p", (64, 48), 20, Fraction(24)),
        ("clip.avi", "mpeg4", "yuv420p", (80, 48), 17, Fraction(15)),
        ("clip.mov", "libx264", "yuv420p", (48, 64), 23, Fraction(50)),
    ],
)
def test_every_output_format_keeps_frame_count_size_and_rate(tmp_path, predictor, name, codec, pix_fmt, size, count,
                                                              rate):
    width, height = size
    source = write_video(tmp_path / name, moving_square_frames(count, height, width), codec=codec, rate=rate,
                         pix_fmt=pix_fmt)
    info = probe(source)
    assert (info.width, info.height, info.frame_rate) == (width, height, rate)
    paths = output_paths(tmp_path / "out", ["square", "sky"], ["frames", "video", "overlay", "rle"])
    with VideoOutputs(paths, ["a red square", "the sky"], info, source=name) as outputs:
        for frame in segment_video(source, ["a red square", "the sky"], model=predictor, smooth=0.5):
            assert frame.image_size == (height, width) and frame.logits.shape == (2, SIDE, SIDE)
            outputs.write(frame)
    assert outputs.files_written == 6
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["overlay.mp4", "rle.jsonl", "sky", "sky.mkv", "square",
                                                      "square.mkv"]
    pngs = sorted(p.name for p in (out / "square").iterdir())
    assert pngs == [f"{i:06d}.png" for i in range(count)]
    first = Image.open(out / "square" / "000000.png")
    assert first.size == (width, height) and first.mode == "L"
    assert set(np.unique(np.asarray(first))) <= {0, 255}
    for video in ("square.mkv", "sky.mkv", "overlay.mp4"):
        frames, written_rate, written_size = read_video(out / video)
        assert len(frames) == count and written_size == (width, height)
        assert abs(float(written_rate) - float(rate)) < 1e-3 * float(rate)
    # The mask video is lossless: its frames are the PNG masks.
    masks, _, _ = read_video(out / "square.mkv")
    for index in (0, count // 2, count - 1):
        np.testing.assert_array_equal(masks[index], np.asarray(Image.open(out / "square" / f"{index:06d}.png")))
    lines = (out / "rle.jsonl").read_text().splitlines()
    assert len(lines) == count
    record = json.loads(lines[3])
    assert record["frame"] == 3 and (record["height"], record["width"]) == (height, width)
    assert [a["prompt"] for a in record["annotations"]] == ["a red square", "the sky"]
    rle = record["annotations"][0]["segmentation"]
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded * 255, np.asarray(Image.open(out / "square" / "000003.png")))
    assert not list(out.rglob(".clipseg-*"))


@pytest.mark.parametrize(("rotation", "corner"), [(90, "bottom-left"), (-90, "top-right"), (180, "bottom-right")])
def test_rotation_metadata_is_honoured(tmp_path, rotation, corner):
    # A white block in the stored frame's top-left corner; FFmpeg's display matrix turns the picture
    # counter-clockwise by `rotation` degrees for display (as `ffmpeg -autorotate` shows it).
    frames = [np.zeros((48, 64, 3), np.uint8) for _ in range(5)]
    for frame in frames:
        frame[:8, :16] = 255
    source = write_video(tmp_path / "phone.mp4", frames, rotation=rotation)
    with VideoReader(source) as reader:
        shown = [frame.image for frame in reader]
    assert len(shown) == 5
    expected_shape = (64, 48, 3) if rotation % 180 else (48, 64, 3)
    assert shown[0].shape == expected_shape
    rows, columns = np.nonzero(shown[2][..., 0] > 128)
    height, width = expected_shape[:2]
    centre = (rows.mean() / height, columns.mean() / width)
    expected = {"bottom-left": (1, 0), "top-right": (0, 1), "bottom-right": (1, 1)}[corner]
    assert abs(centre[0] - expected[0]) < 0.3 and abs(centre[1] - expected[1]) < 0.3


def test_smoothing_reduces_flicker_on_a_static_noisy_scene(tmp_path, predictor):
    frames = moving_square_frames(30, 64, 64, noise=12.0, speed=0)
    source = write_video(tmp_path / "static.mkv", frames, codec="ffv1", pix_fmt="yuv444p")
    raw = torch.stack([f.logits[0] for f in segment_video(source, "a red square", model=predictor, smooth=0.0)])
    smooth = torch.stack([f.logits[0] for f in segment_video(source, "a red square", model=predictor, smooth=0.8)])
    # Frame-to-frame change of the logits: an average over ~9 frames of independent noise shrinks it by far.
    jitter_raw = (raw[1:] - raw[:-1]).abs().mean()
    jitter_smooth = (smooth[1:] - smooth[:-1]).abs().mean()
    assert jitter_smooth < 0.5 * jitter_raw
    torch.testing.assert_close(smooth[0], raw[0])  # nothing to average at the start


def test_logit_smoother_follows_the_exponential_average_and_lets_go_where_the_picture_changes():
    dark = np.zeros((32, 32, 3), np.uint8)
    bright = np.full((32, 32, 3), 255, np.uint8)
    first, second = torch.zeros(1, 8, 8), torch.ones(1, 8, 8)
    smoother = LogitSmoother(0.75)
    smoother(first, dark)
    # Same picture: 0.75 * 0 + 0.25 * 1.
    torch.testing.assert_close(smoother(second, dark), torch.full((1, 8, 8), 0.25))
    # A completely new picture: the weight on the past is 0.75 * exp(-(1 / 0.06)^2), i.e. nothing.
    torch.testing.assert_close(smoother(torch.full((1, 8, 8), 5.0), bright), torch.full((1, 8, 8), 5.0))
    plain = LogitSmoother(0.75, motion_scale=math.inf)
    plain(first, dark)
    torch.testing.assert_close(plain(second, bright), torch.full((1, 8, 8), 0.25))
    plain.reset()
    torch.testing.assert_close(plain(second, bright), second)
    with pytest.raises(ValueError, match="strength"):
        LogitSmoother(1.5)


def _mask_flicker(logits: list[torch.Tensor]) -> float:
    masks = [z >= 0 for z in logits]
    return float(np.mean([(a != b).float().mean() for a, b in zip(masks[:-1], masks[1:], strict=True)]))


def test_smoothing_a_static_noisy_sequence_flickers_far_less():
    rng = np.random.default_rng(0)
    # Logits of a static scene: a ramp through the threshold (0) plus independent noise of std 0.5 in every frame;
    # the frames themselves change only by faint noise (2 grey levels).
    ramp = torch.linspace(-2.0, 2.0, 32).expand(32, 32)[None]
    frames = [np.clip(120 + rng.normal(0, 2, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(200)]
    raw = [ramp + 0.5 * torch.from_numpy(rng.normal(size=(1, 32, 32)).astype(np.float32)) for _ in frames]
    smoother = LogitSmoother(0.8)
    smoothed = [smoother(z, frame) for z, frame in zip(raw, frames, strict=True)]
    # An exponential average with weight w on the past turns independent noise of variance s^2 into a stationary
    # series whose frame-to-frame change has variance (1-w)^2 * s^2 * 2/(1+w); unsmoothed it is 2 s^2. For w=0.8
    # the change's standard deviation shrinks by sqrt(0.04 / 1.8) / 1 = 0.149 (the frames barely differ, so the
    # motion gate stays open).
    change = torch.stack([b - a for a, b in zip(smoothed[50:-1], smoothed[51:], strict=True)]).std()
    change_raw = torch.stack([b - a for a, b in zip(raw[50:-1], raw[51:], strict=True)]).std()
    assert 0.13 < float(change / change_raw) < 0.17
    assert _mask_flicker(smoothed[50:]) < _mask_flicker(raw[50:]) / 3


def test_a_reset_forgets_the_past():
    frame = np.full((16, 16, 3), 90, np.uint8)
    smoother = LogitSmoother(0.8)
    smoother(torch.full((1, 8, 8), -6.0), frame)
    smoother.reset()
    torch.testing.assert_close(smoother(torch.full((1, 8, 8), 2.0), frame), torch.full((1, 8, 8), 2.0))
    # The average restarts from the first frame after the reset: 0.8 * 2 + 0.2 * 7.
    torch.testing.assert_close(smoother(torch.full((1, 8, 8), 7.0), frame), torch.full((1, 8, 8), 3.0))


def _moving_edge(index: int, speed: int) -> tuple[np.ndarray, torch.Tensor]:
    """A red region left of column 8 + speed * index over a grey of the same brightness (Pillow's gray of
    (255, 0, 0) is 255 * 299 / 1000 = 76), and logits +4 on the red, -4 elsewhere."""
    edge = 8 + speed * index
    image = np.full((24, 64, 3), 76, np.uint8)
    image[:, :edge] = (255, 0, 0)
    logits = torch.full((1, 24, 64), -4.0)
    logits[..., :edge] = 4.0
    return image, logits


def test_a_moving_edge_is_tracked_without_lag_while_a_plain_average_trails():
    aware, plain = LogitSmoother(0.8), LogitSmoother(0.8, motion_scale=math.inf)
    for index in range(20):
        image, logits = _moving_edge(index, speed=2)
        truth = logits >= 0
        # Where the colour changed the past gets (almost) no weight: the mask is the frame's own, in every frame.
        assert torch.equal(aware(logits, image) >= 0, truth)
        # A plain average of weight 0.8: a pixel that turns from -4 to +4 reads 4 - 8 * 0.8^k after k frames,
        # which is >= 0 first at k = 4 (-0.096 at k = 3); so the mask's edge trails by 3 frames = 6 pixels.
        if index >= 4:
            columns = (plain(logits, image) >= 0)[0].any(dim=0).nonzero().max().item() + 1
            assert columns == 8 + 2 * index - 6
        else:
            plain(logits, image)


def test_scene_cuts_are_found_and_reset_the_smoothing(tmp_path, predictor):
    shot_a = moving_square_frames(12, 64, 96, noise=6.0, seed=1)
    shot_b = textured_frames(13, 64, 96, seed=2)
    source = write_video(tmp_path / "cut.mp4", shot_a + shot_b)
    smoothed = list(segment_video(source, "a red square", model=predictor, smooth=0.9))
    raw = list(segment_video(source, "a red square", model=predictor, smooth=0.0))
    assert [f.index for f in smoothed if f.scene_cut] == [12]
    # The first frame of the new shot carries nothing of the old one.
    torch.testing.assert_close(smoothed[12].logits, raw[12].logits)
    assert not torch.allclose(smoothed[13].logits, raw[13].logits)
    # Noise and motion alone are no cuts.
    detector = SceneCutDetector()
    calm = moving_square_frames(20, 64, 96, noise=12.0, speed=3)
    assert not any(detector.is_cut(frame) for frame in calm)


def test_every_n_runs_the_model_on_keyframes_and_interpolates_between(tmp_path, predictor):
    shot_a = moving_square_frames(10, 64, 64, noise=2.0)
    shot_b = textured_frames(9, 64, 64, seed=3)
    source = write_video(tmp_path / "every.mkv", shot_a + shot_b, codec="ffv1", pix_fmt="yuv444p")
    every = list(segment_video(source, ["a red square"], negative="blue", model=predictor, every=4, smooth=0.0))
    full = list(segment_video(source, ["a red square"], negative="blue", model=predictor, every=1, smooth=0.0))
    assert len(every) == len(full) == 19
    # Keyframes: every 4th frame of each shot, the last frame of the first shot and the last frame of the video.
    keys = [f.index for f in every if f.keyframe]
    assert keys == [0, 4, 8, 9, 10, 14, 18]
    for index in keys:
        torch.testing.assert_close(every[index].logits, full[index].logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(every[index].negative_logits, full[index].negative_logits, atol=1e-4, rtol=1e-4)
    # Frame 6 lies halfway between keyframes 4 and 8; frame 11 a quarter of the way from 10 to 14.
    torch.testing.assert_close(every[6].logits, (full[4].logits + full[8].logits) / 2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(every[11].logits, 0.75 * full[10].logits + 0.25 * full[14].logits, atol=1e-4,
                               rtol=1e-4)


def test_batches_do_not_change_the_predictions(clip, predictor):
    one = [f.logits for f in segment_video(clip, "a red square", model=predictor, batch_size=1, smooth=0.3)]
    many = [f.logits for f in segment_video(clip, "a red square", model=predictor, batch_size=7, smooth=0.3)]
    assert len(one) == len(many) == 25
    for a, b in zip(one, many, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _truncated(tmp_path: Path, name: str, codec: str) -> Path:
    whole = write_video(tmp_path / f"whole-{name}", moving_square_frames(40, 48, 64, noise=20.0), codec=codec)
    data = whole.read_bytes()
    broken = tmp_path / name
    broken.write_bytes(data[: len(data) // 2])
    return broken


def test_damaged_files_and_non_videos_give_one_line_errors(tmp_path, predictor):
    mkv = _truncated(tmp_path, "cut-short.mkv", "libx264")
    frames = []
    with pytest.raises(VideoError, match=r"cut-short\.mkv: truncated or corrupt video: decoded \d+ of the 40 frames"):
        for frame in segment_video(mkv, "a cup", model=predictor):
            frames.append(frame.index)
    assert 0 < len(frames) < 40
    mp4 = _truncated(tmp_path, "cut-short.mp4", "libx264")  # the index (moov atom) is at the end: nothing opens
    with pytest.raises(VideoError, match=r"cut-short\.mp4: not a readable video"):
        segment_video(mp4, "a cup", model=predictor)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoError, match=r"notes\.mp4: not a readable video"):
        probe(text)
    picture = tmp_path / "photo.png"
    Image.new("RGB", (32, 24), "red").save(picture)
    with pytest.raises(VideoError, match=r"photo\.png: is a still image"):
        probe(picture)
    with pytest.raises(FileNotFoundError):
        probe(tmp_path / "missing.mp4")
    for message in (str(error) for error in [VideoError("x")]):
        assert "\n" not in message


def test_a_failed_video_leaves_no_output_and_a_rerun_skips_finished_outputs(tmp_path, predictor, clip):
    broken = _truncated(tmp_path, "broken.mkv", "libx264")
    out = tmp_path / "out" / "broken"
    paths = output_paths(out, ["cup"], ["frames", "video", "overlay", "rle"])
    with pytest.raises(VideoError):
        with VideoOutputs(paths, ["a cup"], probe(broken)) as outputs:
            for frame in segment_video(broken, "a cup", model=predictor):
                outputs.write(frame)
    assert not out.exists()  # not even a temporary, nor an empty folder

    done = tmp_path / "out" / "square"
    paths = output_paths(done, ["cup"], ["frames", "rle"])
    with VideoOutputs(paths, ["a cup"], probe(clip)) as outputs:
        for frame in segment_video(clip, "a cup", model=predictor):
            outputs.write(frame)
    stamp = (done / "rle.jsonl").stat().st_mtime_ns
    more = output_paths(done, ["cup"], ["frames", "rle", "video"])
    again = VideoOutputs(more, ["a cup"], probe(clip))
    assert list(again.todo) == [("video", 0)]
    assert (done / "rle.jsonl").stat().st_mtime_ns == stamp
