"""Tiled inference with a model that can segment (issue 15, part 2).

A small decoder on a frozen random CLIP (no pretrained weights exist offline) is trained on synthetic scenes of
coloured shapes at 352 px with the project's trainer (PhraseCut layout, a few minutes on the CPU). Scenes of the
same kind 4x larger (1408 px; objects scaled with the image, and objects of the training size) are then
segmented with each shape's phrase ("red circle"): the global pass, tiles at several scales, and some of them
with `--refine guided`, scored against the exact masks (IoU and boundary
F-score with 2-pixel tolerance) at threshold 0.5 and at the model's calibrated threshold, with seconds per
megapixel measured side by side. Tile settings were compared on seed 12345; report on another seed.

    PYTHONPATH=src python benchmarks/bench_tiles.py --work /tmp/tiles --iterations 600 --scenes 12 --seed 777 --json out.json

The trained model is kept in the work directory; a second run with the same --work reuses it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from refine_scenes import boundary_f, cpu_name, iou

import clipseg
from clipseg.data.synthetic import render_scene, write_phrasecut
from clipseg.predictor import Predictor
from clipseg.thresholds import binary_mask
from clipseg.tiling import TileOptions

TRAIN_SIZE = 352
ARCHITECTURE = {
    "vision": {"width": 64, "layers": 3, "heads": 2, "mlp_width": 128, "patch_size": 16, "image_size": 352, "output_dim": 64},
    "text": {"width": 64, "layers": 2, "heads": 2, "mlp_width": 128, "output_dim": 64},
    "decoder": {"reduce_dim": 64, "heads": 4, "mlp_width": 128, "extract_layers": [1, 2]},
}
VARIANTS: dict[str, TileOptions | None] = {
    "global": None,
    "tiles 2 (default)": TileOptions(scales=(2,)),
    "tiles 3": TileOptions(scales=(3,)),
    "tiles 4": TileOptions(scales=(4,)),
    "tiles 2+4": TileOptions(scales=(2, 4)),
}
# Variants also scored after `--refine guided` (its cost added to theirs).
REFINED = ("global", "tiles 2 (default)", "tiles 4")
# Two kinds of large scene: the training scenes at 4x the resolution (objects grow with the image: tiles see them
# larger than in training), and a 4x larger canvas holding objects of the training size (small in the photo:
# the global pass sees them at a quarter of their training size).
SCENE_KINDS = {"objects scaled with the image": (0.12, 0.25), "objects of the training size": (0.03, 0.0625)}


def train(work: Path, iterations: int, images: int) -> Path:
    from clipseg.training.config import TrainConfig
    from clipseg.training.trainer import Trainer

    model_dir = work / "run" / "model"
    if (model_dir / "config.json").exists():
        return model_dir
    root = write_phrasecut(work / "data", images, seed=0, size=(TRAIN_SIZE, TRAIN_SIZE))
    config = TrainConfig.from_dict({
        "name": "tiles-bench",
        "model": {"clip": "random", "preset": "rd64", "architecture": ARCHITECTURE, "dropout": 0.0},
        "data": {"root": str(root), "val": "test", "image_size": TRAIN_SIZE, "prompt_templates": "fixed",
                 "with_visual": False, "negative_prob": 0.2, "num_workers": 1},
        "optim": {"batch_size": 8, "max_iterations": iterations, "lr": 1e-3, "lr_min": 1e-4, "precision": "fp32"},
        "run": {"output_dir": str(work / "run"), "device": "cpu", "log_every": 25, "checkpoint_every": iterations,
                "val_batch_size": 8, "progress": False},
    })
    start = time.perf_counter()
    result = Trainer(config).train()
    iou_fg, threshold = result.validation.scores.best("iou_fg")
    print(f"trained {iterations} steps in {time.perf_counter() - start:.0f} s; held-out 352 px IoU_FG {iou_fg:.3f} "
          f"(t={threshold:.2f})")
    return Path(result.model_dir)


def evaluate(model_dir: Path, scenes: int, size: int, seed: int, radius: tuple[float, float]) -> dict:
    """Score every variant at threshold 0.5 and at the model's calibrated overall threshold (its thresholds.json,
    what `clipseg segment` uses), with seconds per megapixel measured side by side on the same scenes."""
    model = clipseg.load_model(model_dir)
    thresholds = {"0.5": 0.5}
    if model.thresholds is not None:
        thresholds["calibrated"] = model.thresholds.overall
    predictor = Predictor(model)
    rng = np.random.default_rng(seed)
    names = [*VARIANTS, *(f"{name} + refine" for name in REFINED)]
    scores = {name: {"seconds": [], **{key: {"iou": [], "bf": []} for key in thresholds}} for name in names}
    megapixels = 0.0
    for _ in range(scenes):
        scene = render_scene(rng, size=(size, size), n_shapes=(1, 3), radius=radius)
        phrases = sorted({shape.phrase for shape in scene.shapes})
        truths = [np.any([s.mask for s in scene.shapes if s.phrase == phrase], axis=0) for phrase in phrases]
        pixels = np.asarray(scene.image)
        megapixels += size * size / 1e6
        for name, options in VARIANTS.items():
            start = time.perf_counter()
            predictor.set_image(scene.image)
            prediction = predictor.predict(phrases, tiles=options)
            seconds = time.perf_counter() - start
            scores[name]["seconds"].append(seconds)
            _score(scores[name], thresholds, prediction.probabilities.numpy(), truths)
            if name in REFINED:
                # Refined around each threshold it is scored at, as `clipseg segment --refine` does.
                bucket = scores[f"{name} + refine"]
                for key, threshold in thresholds.items():
                    start = time.perf_counter()
                    refined = prediction.refined(pixels, threshold=threshold).probabilities
                    if key == "0.5":
                        bucket["seconds"].append(seconds + time.perf_counter() - start)
                    _score(bucket, {key: threshold}, refined.numpy(), truths)
    summary: dict = {"thresholds": thresholds, "masks": None, "variants": {}}
    for name in names:
        row = {"seconds_per_mpx": float(np.sum(scores[name]["seconds"]) / megapixels)}
        for key in thresholds:
            row[f"iou@{key}"] = float(np.mean(scores[name][key]["iou"]))
            row[f"boundary_f@{key}"] = float(np.mean(scores[name][key]["bf"]))
        summary["variants"][name] = row
        summary["masks"] = len(scores[name]["0.5"]["iou"])
    header = "  ".join(f"IoU@{key:<10} BF@{key:<10}" for key in thresholds)
    print(f"  {'variant':<30} {header} s/Mpx  ({summary['masks']} masks)")
    for name, row in summary["variants"].items():
        cells = "  ".join(f"{row[f'iou@{key}']:<14.3f} {row[f'boundary_f@{key}']:<13.3f}" for key in thresholds)
        print(f"  {name:<30} {cells} {row['seconds_per_mpx']:.2f}", flush=True)
    return summary


def _score(bucket: dict, thresholds: dict[str, float], probabilities: np.ndarray, truths: list[np.ndarray]) -> None:
    for key, threshold in thresholds.items():
        for probability, truth in zip(probabilities, truths, strict=True):
            mask = binary_mask(probability, threshold)
            bucket[key]["iou"].append(iou(mask, truth))
            bucket[key]["bf"].append(boundary_f(mask, truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="data, training run and model go here")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--images", type=int, default=200, help="synthetic training images")
    parser.add_argument("--scenes", type=int, default=8, help="test scenes")
    parser.add_argument("--size", type=int, default=4 * TRAIN_SIZE, help="side of the test scenes")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; torch threads {torch.get_num_threads()}")
    model_dir = train(args.work, args.iterations, args.images)
    summary = {"cpu": cpu_name(), "iterations": args.iterations, "scenes": args.scenes, "size": args.size,
               "seed": args.seed, "kinds": {}}
    for kind, radius in SCENE_KINDS.items():
        print(f"{args.scenes} scenes of {args.size}x{args.size} (seed {args.seed}), {kind}, each shape's phrase as "
              "prompt:")
        summary["kinds"][kind] = evaluate(model_dir, args.scenes, args.size, args.seed, radius)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
