"""Where the time of one `clipseg segment` call goes: every stage of the Predictor timed on its own, and the
backbone's operators grouped by torch.profiler.

    python benchmarks/profile_predictor.py                     # a 1920x1080 photo, 1 and 8 prompts
    python benchmarks/profile_predictor.py --size 640x480 --json profile.json

The model is the full ViT-B/16 rd64-refined with random weights, prepared as the CLI prepares it
(`apply_precision(model, "fp32")`). Stages: preprocessing (PIL resize to 352 and normalisation), backbone (10 CLIP
blocks), text encoder, decoder (batched over the prompts), upsampling the logits to the full image size with the
sigmoid, and post-processing (threshold, PNG encoding of each mask).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipseg.image import preprocess
from clipseg.model.clipseg import CLIPSeg
from clipseg.model.config import PRESETS
from clipseg.precision import apply_precision
from clipseg.predictor import Predictor
from clipseg.testing import he_init_

PROMPTS = ["a cup", "something to sit on", "the red circle", "a dog", "green", "a table", "a person", "the sky"]

# torch.profiler operator names -> what they do in the backbone.
GROUPS = {
    "projections (q/k/v, out, MLP matrix products)": ("_linear_pointwise", "addmm", "mm", "linear"),
    "attention (softmax(q kᵀ) v)": ("scaled_dot_product", "flash_attention", "bmm", "softmax"),
    "MLP activation (QuickGELU)": ("sigmoid", "mul"),
    "layer norms and residual adds": ("layer_norm", "add"),
    "patch embedding and positions": ("convolution", "conv2d", "cat", "upsample", "interpolate"),
}


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def backbone_breakdown(model: CLIPSeg, pixels: torch.Tensor) -> dict[str, float]:
    """Seconds of the backbone's operators, summed into GROUPS (the rest under "other")."""
    from torch.profiler import ProfilerActivity, profile

    model.extract_features(pixels)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        model.extract_features(pixels)
    totals: dict[str, float] = dict.fromkeys([*GROUPS, "other"], 0.0)
    for event in profiler.key_averages():
        name = event.key.split("::")[-1]
        group = next((g for g, keys in GROUPS.items() if any(k in name for k in keys)), "other")
        totals[group] += event.self_cpu_time_total / 1e6
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1920x1080", help="photo WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.lower().split("x"))

    torch.manual_seed(0)
    model = apply_precision(he_init_(CLIPSeg(PRESETS["rd64-refined"]), seed=0), "fp32")
    config = model.config
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        pixels = preprocess(photo, config.image_size, config.image_mean, config.image_std)[None]
        features = model.extract_features(pixels)
        for count in (1, 8):
            prompts = PROMPTS[:count]
            ids = model.tokenizer(prompts).ids
            conditional = model.encode_text(ids)
            side = (config.image_size, config.image_size)
            predictor = Predictor(model)
            predictor.set_image(photo)
            prediction = predictor.predict(prompts)

            def postprocess(prediction=prediction) -> None:
                for mask in prediction.masks().numpy():
                    Image.fromarray(mask.astype(np.uint8) * 255).save(io.BytesIO(), format="PNG")

            stages = {
                "preprocessing": lambda: preprocess(photo, config.image_size, config.image_mean, config.image_std),
                "backbone": lambda: model.extract_features(pixels),
                "text encoder": lambda ids=ids: model.encode_text(ids),
                "decoder": lambda c=conditional: model.decode(features, c, output_size=side),
                # A fresh Prediction per run: it caches its probabilities.
                "upsampling to full size + sigmoid": lambda p=prediction: replace(p).probabilities,
                "post-processing (threshold, PNG)": postprocess,
            }
            seconds = {name: best_seconds(run, args.repeats) for name, run in stages.items()}
            total = sum(seconds.values())
            results[f"1 image x {count} prompts"] = seconds
            print(f"\n1 image ({width}x{height}) x {count} prompt(s): {total:.3f} s in all")
            for name, value in seconds.items():
                print(f"  {name:40s} {value * 1e3:8.1f} ms  {value / total:6.1%}")
        breakdown = backbone_breakdown(model, pixels)
    results["backbone operators"] = breakdown
    total = sum(breakdown.values())
    print(f"\nbackbone operators (torch.profiler, {total * 1e3:.0f} ms with profiling overhead):")
    for name, value in breakdown.items():
        print(f"  {name:48s} {value * 1e3:8.1f} ms  {value / total:6.1%}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
