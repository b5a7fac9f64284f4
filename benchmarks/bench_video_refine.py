"""Video with edge-aware refinement: where in the pipeline `--refine guided` belongs relative to temporal smoothing.

Uses bench_video.py's small trained decoder and synthetic clips (static noisy scenes and moving shapes, H.264) and
compares, on flicker (mean fraction of pixels whose mask changes between consecutive frames) and IoU with the
exact masks:

- off: no smoothing, no refinement;
- refine only: `segment_video(..., smooth=0, refine="guided")`;
- smooth only: the default motion-aware smoothing;
- refine, then smooth (what `segment_video(..., refine="guided")` does): each frame refined with itself as guide,
  then the logits of the refined maps smoothed;
- smooth, then refine (the other order): each frame's smoothed probabilities refined with that frame as guide
  (`Prediction.refined` on the frames of `segment_video(..., smooth=...)`).

    python benchmarks/bench_video_refine.py               # ~4 min on 2 busy cores
    python benchmarks/bench_video_refine.py --steps 400   # a weaker decoder, faster
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_video import CLIP_SIZE, SIDE, THRESHOLD, cpu_name, flicker, iou, render_clip, train_decoder, write_mp4

import clipseg
from clipseg.predictor import Predictor
from clipseg.video import DEFAULT_SMOOTH, segment_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps of the small decoder")
    parser.add_argument("--clips", type=int, default=6, help="clips of each kind")
    parser.add_argument("--frames", type=int, default=30, help="frames per clip")
    parser.add_argument("--smooth", type=float, default=DEFAULT_SMOOTH)
    parser.add_argument("--work", type=Path, help="folder for data, model and clips (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_name()}")
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        predictor = Predictor(clipseg.load_model(train_decoder(work, args.steps)), image_size=SIDE)

        def through_library(path: Path, prompt: str, strength: float, method: str | None) -> list[np.ndarray]:
            frames = segment_video(path, prompt, model=predictor, templates="fixed", smooth=strength, refine=method)
            return [frame.masks(THRESHOLD)[0].numpy() for frame in frames]

        def smooth_then_refine(path: Path, prompt: str) -> list[np.ndarray]:
            frames = segment_video(path, prompt, model=predictor, templates="fixed", smooth=args.smooth)
            return [frame.refined(frame.image).masks(THRESHOLD)[0].numpy() for frame in frames]

        methods = {
            "off": lambda path, prompt: through_library(path, prompt, 0.0, None),
            "refine only": lambda path, prompt: through_library(path, prompt, 0.0, "guided"),
            f"smooth {args.smooth} only": lambda path, prompt: through_library(path, prompt, args.smooth, None),
            "refine, then smooth": lambda path, prompt: through_library(path, prompt, args.smooth, "guided"),
            "smooth, then refine": smooth_then_refine,
        }
        rows = {name: {"static": [], "moving": [], "static_iou": [], "moving_iou": []} for name in methods}
        for kind in ("static", "moving"):
            for seed in range(args.clips):
                speed = 3.0 if kind == "moving" else 0.0  # pixels per frame
                images, exact, prompt = render_clip(seed, args.frames, speed=speed, noise=10.0)
                path = write_mp4(work / f"{kind}-{seed}.mp4", images)
                for name, run in methods.items():
                    masks = run(path, prompt)
                    rows[name][kind].append(flicker(masks))
                    rows[name][f"{kind}_iou"].append(iou(masks, exact))
    print(f"\n{args.clips} static + {args.clips} moving clips, {args.frames} frames of {CLIP_SIZE}x{CLIP_SIZE}, "
          f"noise sigma 10, H.264, threshold {THRESHOLD}, smoothing {args.smooth} (motion-aware)")
    print(f"{'pipeline':<22} {'static flicker':>15} {'static IoU':>11} {'moving flicker':>15} {'moving IoU':>11}")
    for name, values in rows.items():
        mean = {key: float(np.mean(value)) for key, value in values.items()}
        print(f"{name:<22} {mean['static']:>15.4f} {mean['static_iou']:>11.3f} {mean['moving']:>15.4f} "
              f"{mean['moving_iou']:>11.3f}")


if __name__ == "__main__":
    main()
