"""Tiled inference with a model that can segment (issue 15, part 2).

A small decoder on a frozen random CLIP (no pretrained weights exist offline) is trained on synthetic scenes of
coloured shapes at 352 px with the project's trainer (PhraseCut layout, a few minutes on the CPU). Scenes of the
same kind 4x larger (1408 px) are then segmented with each shape's phrase ("red circle"): the global pass,
tiles at several scales, and tiles + `--refine guided`, scored against the exact masks at threshold 0.5 (IoU and
boundary F-score with 2-pixel tolerance), with seconds per megapixel measured side by side.

    PYTHONPATH=src python benchmarks/bench_tiles.py --work /tmp/tiles --iterations 150 --scenes 4 --json out.json

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
from clipseg.tiling import TileOptions

TRAIN_SIZE = 352
ARCHITECTURE = {
    "vision": {"width": 64, "layers": 3, "heads": 2, "mlp_width": 128, "patch_size": 16, "image_size": 352, "output_dim": 64},
    "text": {"width": 64, "layers": 2, "heads": 2, "mlp_width": 128, "output_dim": 64},
    "decoder": {"reduce_dim": 64, "heads": 4, "mlp_width": 128, "extract_layers": [1, 2]},
}
VARIANTS: dict[str, TileOptions | None] = {
    "global": None,
    "tiles 2": TileOptions(scales=(2,)),
    "tiles 2, global weight 0": TileOptions(scales=(2,), global_weight=0.0),
    "tiles 3": TileOptions(scales=(3,)),
    "tiles 2+4": TileOptions(scales=(2, 4)),
}


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


def evaluate(model_dir: Path, scenes: int, size: int, seed: int) -> dict:
    predictor = Predictor(clipseg.load_model(model_dir))
    rng = np.random.default_rng(seed)
    names = [*VARIANTS, "tiles 2 + refine"]
    scores: dict[str, dict[str, list[float]]] = {name: {"iou": [], "bf": [], "seconds": []} for name in names}
    megapixels = 0.0
    for _ in range(scenes):
        scene = render_scene(rng, size=(size, size), n_shapes=(1, 3))
        phrases = sorted({shape.phrase for shape in scene.shapes})
        truths = [np.any([s.mask for s in scene.shapes if s.phrase == phrase], axis=0) for phrase in phrases]
        pixels = np.asarray(scene.image)
        megapixels += size * size / 1e6
        for name, options in VARIANTS.items():
            start = time.perf_counter()
            predictor.set_image(scene.image)
            prediction = predictor.predict(phrases, tiles=options)
            probabilities = prediction.probabilities
            scores[name]["seconds"].append(time.perf_counter() - start)
            _score(scores[name], probabilities.numpy(), truths)
            if name == "tiles 2":
                start = time.perf_counter()
                refined = prediction.refined(pixels).probabilities
                scores["tiles 2 + refine"]["seconds"].append(scores[name]["seconds"][-1] + time.perf_counter() - start)
                _score(scores["tiles 2 + refine"], refined.numpy(), truths)
    summary = {}
    for name in names:
        summary[name] = {
            "iou": float(np.mean(scores[name]["iou"])),
            "boundary_f": float(np.mean(scores[name]["bf"])),
            "seconds_per_mpx": float(np.sum(scores[name]["seconds"]) / megapixels),
        }
        print(f"  {name:<28} IoU {summary[name]['iou']:.3f}  boundary F {summary[name]['boundary_f']:.3f}  "
              f"{summary[name]['seconds_per_mpx']:.2f} s/Mpx", flush=True)
    return summary


def _score(bucket: dict[str, list[float]], probabilities: np.ndarray, truths: list[np.ndarray]) -> None:
    for probability, truth in zip(probabilities, truths, strict=True):
        bucket["iou"].append(iou(probability >= 0.5, truth))
        bucket["bf"].append(boundary_f(probability >= 0.5, truth))


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
    print(f"{args.scenes} scenes of {args.size}x{args.size}, each shape's phrase as prompt, threshold 0.5:")
    summary = evaluate(model_dir, args.scenes, args.size, args.seed)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
