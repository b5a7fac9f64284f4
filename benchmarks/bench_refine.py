"""Edge-aware refinement and alpha matting against exact masks, independent of any model (issue 15, parts 1 and 3).

1. Refinement: scenes from `refine_scenes.make_scene` (thin limbs, holes, curved edges, textured and photo
   backgrounds, several sizes) get CLIPSeg's resolution simulated: the exact mask area-averaged to the 22x22 token
   grid and upsampled bilinearly. Plain upsampling and `clipseg.refine.refine` (default options) are scored
   against the exact mask, both thresholded at 0.5: IoU and boundary F-score (2-pixel tolerance).
2. Alpha matting: scenes with fur strands and defocus blur, whose exact soft alpha is known. The coarse soft mask,
   the refined map and `clipseg.refine.alpha_matte` (defaults) are scored by SAD (thousands) and MSE.

    PYTHONPATH=src python benchmarks/bench_refine.py --scenes 12 --seed 1000 --json out.json

Prints a table per part and the averages; seconds are wall-clock on this machine, measured side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from refine_scenes import boundary_f, coarse_mask, cpu_name, iou, make_scene, mse, sad

from clipseg.refine import alpha_matte, refine
from clipseg.thresholds import binary_mask

SIZES = ((1024, 1024), (768, 1280), (1500, 1000), (2048, 1536), (600, 900), (1333, 777))


def bench_refinement(count: int, seed: int) -> dict:
    rows = []
    for index in range(count):
        rng = np.random.default_rng(seed + index)
        scene = make_scene(rng, SIZES[index % len(SIZES)], fur=False, blur=float(index % 2))
        coarse = coarse_mask(scene.mask)
        start = time.perf_counter()
        refined = refine(coarse, scene.image)
        seconds = time.perf_counter() - start
        plain_mask, refined_mask = binary_mask(coarse, 0.5), binary_mask(refined, 0.5)
        rows.append({
            "scene": f"{seed + index} {scene.name}",
            "iou_plain": iou(plain_mask, scene.mask),
            "iou_refined": iou(refined_mask, scene.mask),
            "bf_plain": boundary_f(plain_mask, scene.mask),
            "bf_refined": boundary_f(refined_mask, scene.mask),
            "seconds_per_mpx": seconds / (scene.mask.size / 1e6),
        })
        print(
            f"  {rows[-1]['scene']:<22} IoU {rows[-1]['iou_plain']:.3f} -> {rows[-1]['iou_refined']:.3f}   "
            f"boundary F {rows[-1]['bf_plain']:.3f} -> {rows[-1]['bf_refined']:.3f}   "
            f"{rows[-1]['seconds_per_mpx']:.2f} s/Mpx",
            flush=True,
        )
    return {"rows": rows, "mean": _means(rows)}


def bench_matting(count: int, seed: int) -> dict:
    rows = []
    for index in range(count):
        rng = np.random.default_rng(seed + index)
        scene = make_scene(rng, SIZES[index % len(SIZES)], fur=True, blur=float(1 + index % 2))
        coarse = coarse_mask(scene.mask)
        refined = refine(coarse, scene.image)
        start = time.perf_counter()
        alpha = alpha_matte(coarse, scene.image)
        seconds = time.perf_counter() - start
        row = {"scene": f"{seed + index} {scene.name}", "seconds_per_mpx": seconds / (scene.alpha.size / 1e6)}
        for name, estimate in (("coarse", coarse), ("refined", refined), ("matte", alpha)):
            row[f"sad_{name}"] = sad(estimate, scene.alpha)
            row[f"mse_{name}"] = mse(estimate, scene.alpha)
        rows.append(row)
        print(
            f"  {row['scene']:<22} SAD coarse {row['sad_coarse']:.1f} refined {row['sad_refined']:.1f} "
            f"matte {row['sad_matte']:.1f}   MSE {row['mse_coarse']:.4f} / {row['mse_refined']:.4f} / "
            f"{row['mse_matte']:.4f}   matting {row['seconds_per_mpx']:.2f} s/Mpx",
            flush=True,
        )
    return {"rows": rows, "mean": _means(rows)}


def _means(rows: list[dict]) -> dict:
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0] if key != "scene"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=12, help="scenes per part")
    parser.add_argument("--seed", type=int, default=1000, help="first scene seed")
    parser.add_argument("--skip-matting", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; scenes {args.seed}..{args.seed + args.scenes - 1}")
    print("1. refinement (default options) vs plain bilinear upsampling of the 22x22 average")
    results = {"refinement": bench_refinement(args.scenes, args.seed)}
    mean = results["refinement"]["mean"]
    print(
        f"  mean: IoU {mean['iou_plain']:.3f} -> {mean['iou_refined']:.3f} ({mean['iou_refined'] - mean['iou_plain']:+.3f}), "
        f"boundary F {mean['bf_plain']:.3f} -> {mean['bf_refined']:.3f} ({mean['bf_refined'] - mean['bf_plain']:+.3f}), "
        f"{mean['seconds_per_mpx']:.2f} s/Mpx"
    )
    if not args.skip_matting:
        print("3. alpha matting (defaults) vs the coarse soft mask and the refined map, against the exact alpha")
        results["matting"] = bench_matting(args.scenes, args.seed)
        mean = results["matting"]["mean"]
        print(
            f"  mean SAD: coarse {mean['sad_coarse']:.1f}, refined {mean['sad_refined']:.1f}, matte {mean['sad_matte']:.1f}; "
            f"MSE: {mean['mse_coarse']:.4f}, {mean['mse_refined']:.4f}, {mean['mse_matte']:.4f}; "
            f"matting {mean['seconds_per_mpx']:.2f} s/Mpx"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
