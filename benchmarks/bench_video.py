"""Video: flicker and accuracy of temporal smoothing, and frames/s of `segment_video` at 720p and 1080p.

1. Trains a small decoder (frozen random CLIP, the end-to-end test's architecture) on synthetic shapes in the
   PhraseCut layout, so that masks mean something.
2. Renders synthetic clips with PyAV (H.264 in MP4, decoded back through `clipseg.video`):
   static scenes with fresh Gaussian noise in every frame, and scenes where a shape moves; the exact mask of the
   prompted shape is known for every frame.
3. Segments each clip with smoothing off, with a plain exponential moving average and with the motion-aware
   average (`clipseg.video.temporal`), and reports flicker (mean fraction of pixels whose mask changes between
   consecutive frames) and IoU with the exact masks.
4. Times `segment_video` (decode, model, smoothing, full-size probabilities) with the full ViT-B/16 rd64-refined
   architecture (random weights) on 720p and 1080p clips, `every=1` and `every=4`.

    python benchmarks/bench_video.py                 # everything (~10 min on 2 busy cores)
    python benchmarks/bench_video.py --skip speed    # flicker only
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

import clipseg
from clipseg.data.synthetic import COLOURS, rasterize_polygons, write_phrasecut
from clipseg.data.synthetic import _shape_outline, _textured_background  # the scenes the decoder was trained on
from clipseg.model.config import PRESETS
from clipseg.predictor import Predictor
from clipseg.testing import random_model
from clipseg.training.config import TrainConfig
from clipseg.training.trainer import Trainer
from clipseg.video import segment_video

ARCHITECTURE = {
    "vision": {"width": 64, "layers": 3, "heads": 4, "mlp_width": 128, "patch_size": 8, "image_size": 64,
               "output_dim": 64},
    "text": {"width": 64, "layers": 2, "heads": 2, "mlp_width": 128, "output_dim": 64},
    "decoder": {"reduce_dim": 64, "heads": 4, "mlp_width": 128, "extract_layers": [1, 2]},
}
SIDE = 64
CLIP_SIZE = 128
THRESHOLD = 0.4
KINDS = ("circle", "square", "triangle")


def cpu_name() -> str:
    if sys.platform == "linux":
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def train_decoder(work: Path, steps: int) -> Path:
    root = write_phrasecut(work / "data", 400, seed=0, size=(SIDE, SIDE))
    config = TrainConfig.from_dict({
        "name": "video-bench",
        "model": {"clip": "random", "architecture": ARCHITECTURE, "dropout": 0.0},
        "data": {"root": str(root), "val": "test", "image_size": SIDE, "prompt_templates": "fixed",
                 "with_visual": False, "negative_prob": 0.2, "num_workers": 1},
        "optim": {"batch_size": 16, "max_iterations": steps, "lr": 1e-3, "lr_min": 1e-4, "precision": "fp32"},
        "run": {"output_dir": str(work / "run"), "device": "cpu", "log_every": 100, "checkpoint_every": steps,
                "val_batch_size": 32, "progress": False},
    })
    result = Trainer(config).train()
    iou, _ = result.validation.scores.best("iou_fg")
    print(f"decoder trained for {steps} steps: held-out IoU_FG {iou:.3f}")
    return result.model_dir


def render_clip(seed: int, frames: int, *, moving: bool, noise: float) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """RGB frames, exact masks of the prompted shape, and the prompt ("red circle")."""
    rng = np.random.default_rng(seed)
    background = _textured_background(rng, CLIP_SIZE, CLIP_SIZE)
    kind, colour = str(rng.choice(KINDS)), str(rng.choice(list(COLOURS)))
    other_kind = str(rng.choice([k for k in KINDS if k != kind]))
    other_colour = str(rng.choice([c for c in COLOURS if c != colour]))
    radius = rng.uniform(0.14, 0.2) * CLIP_SIZE
    start = np.array([radius + 2, rng.uniform(radius, CLIP_SIZE / 2 - 4)])
    velocity = np.array([(CLIP_SIZE - 2 * radius - 4) / frames, rng.uniform(-0.3, 0.3)]) if moving else np.zeros(2)
    other = [rng.uniform(CLIP_SIZE / 2 + radius, CLIP_SIZE - radius), CLIP_SIZE - radius - 2]
    images, masks = [], []
    for index in range(frames):
        cx, cy = start + velocity * index
        target = rasterize_polygons([np.round(_shape_outline(kind, cx, cy, radius, 0.1)).ravel().tolist()],
                                    (CLIP_SIZE, CLIP_SIZE))
        distractor = rasterize_polygons(
            [np.round(_shape_outline(other_kind, other[0], other[1], radius * 0.8, -0.1)).ravel().tolist()],
            (CLIP_SIZE, CLIP_SIZE),
        ) & ~target
        pixels = background.copy()
        pixels[distractor] = COLOURS[other_colour]
        pixels[target] = COLOURS[colour]
        pixels += rng.normal(0.0, noise, pixels.shape)
        images.append(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
        masks.append(target)
    return images, masks, f"{colour} {kind}"


def write_mp4(path: Path, frames: list[np.ndarray], rate: int = 25) -> Path:
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "20"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def flicker(masks: list[np.ndarray]) -> float:
    return float(np.mean([(a != b).mean() for a, b in zip(masks[:-1], masks[1:], strict=True)]))


def iou(predicted: list[np.ndarray], exact: list[np.ndarray]) -> float:
    scores = [(p & e).sum() / max(1, (p | e).sum()) for p, e in zip(predicted, exact, strict=True)]
    return float(np.mean(scores))


def measure_flicker(model_dir: Path, work: Path, clips: int, frames: int, strengths: list[float]) -> None:
    predictor = Predictor(clipseg.load_model(model_dir), image_size=SIDE)  # the size it was trained at
    methods = {"off": (0.0, math.inf)}
    for strength in strengths:
        methods[f"EMA {strength}"] = (strength, math.inf)
        methods[f"motion-aware {strength}"] = (strength, None)
    rows = {name: {"static": [], "moving": [], "static_iou": [], "moving_iou": []} for name in methods}
    for kind in ("static", "moving"):
        for seed in range(clips):
            images, exact, prompt = render_clip(seed, frames, moving=kind == "moving", noise=10.0)
            path = write_mp4(work / f"{kind}-{seed}.mp4", images)
            for name, (strength, motion) in methods.items():
                extra = {} if motion is None else {"motion_scale": motion}
                masks = [
                    frame.masks(THRESHOLD)[0].numpy()
                    for frame in segment_video(path, prompt, model=predictor, templates="fixed", smooth=strength,
                                               **extra)
                ]
                rows[name][kind].append(flicker(masks))
                rows[name][f"{kind}_iou"].append(iou(masks, exact))
    off = {key: float(np.mean(value)) for key, value in rows["off"].items()}
    print(f"\nflicker: {clips} static + {clips} moving clips, {frames} frames of {CLIP_SIZE}x{CLIP_SIZE}, "
          f"noise sigma 10, H.264 CRF 20, threshold {THRESHOLD}")
    print(f"{'smoothing':<22} {'static flicker':>15} {'reduction':>10} {'moving flicker':>15} {'moving IoU':>11} "
          f"{'vs off':>8} {'static IoU':>11}")
    for name, values in rows.items():
        mean = {key: float(np.mean(value)) for key, value in values.items()}
        print(f"{name:<22} {mean['static']:>15.4f} {off['static'] / max(mean['static'], 1e-9):>9.1f}x "
              f"{mean['moving']:>15.4f} {mean['moving_iou']:>11.3f} {mean['moving_iou'] - off['moving_iou']:>+8.3f} "
              f"{mean['static_iou']:>11.3f}")


def measure_speed(work: Path, frames: int, batch_size: int) -> None:
    model = random_model(PRESETS["rd64-refined"], seed=0)
    predictor = Predictor(model)
    print(f"\nframes/s, ViT-B/16 rd64-refined (random weights), {frames} frames, batch {batch_size}, "
          f"smoothing 0.6, full-size probabilities of one prompt per frame, {torch.get_num_threads()} threads")
    print(f"{'size':<10} {'every 1':>9} {'every 4':>9} {'ratio':>7}")
    for label, (width, height) in {"720p": (1280, 720), "1080p": (1920, 1080)}.items():
        images = []
        for index in range(frames):
            image = np.full((height, width, 3), (40, 60, 160), np.uint8)
            left = 40 + index * 12
            image[height // 4 : height // 4 + height // 5, left : left + height // 5] = (230, 30, 30)
            images.append(image)
        path = write_mp4(work / f"speed-{label}.mp4", images)
        rates = {}
        for every in (1, 4):
            list(segment_video(path, "a red square", model=predictor, every=every, batch_size=batch_size))  # warm-up
            start = time.perf_counter()
            for frame in segment_video(path, "a red square", model=predictor, every=every, batch_size=batch_size,
                                       smooth=0.6):
                frame.probability(0)
            rates[every] = frames / (time.perf_counter() - start)
        print(f"{label:<10} {rates[1]:>9.2f} {rates[4]:>9.2f} {rates[4] / rates[1]:>6.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=["flicker", "speed"])
    parser.add_argument("--steps", type=int, default=800, help="training steps of the small decoder")
    parser.add_argument("--clips", type=int, default=6, help="clips of each kind")
    parser.add_argument("--frames", type=int, default=40, help="frames per flicker clip")
    parser.add_argument("--speed-frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.6, 0.8])
    parser.add_argument("--work", type=Path, help="folder for data, model and clips (default: a temporary one)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; PyAV {av.__version__}")
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        if "flicker" not in args.skip:
            model_dir = work / "run" / "model"
            if not (model_dir / "config.json").exists():
                torch.manual_seed(0)
                model_dir = train_decoder(work, args.steps)
            measure_flicker(model_dir, work, args.clips, args.frames, args.strengths)
        if "speed" not in args.skip:
            measure_speed(work, args.speed_frames, args.batch_size)


if __name__ == "__main__":
    main()
