"""`clipseg segment --engine ray` against `--engine local` on the same images, full ViT-B/16 size, in one run.

    python benchmarks/bench_ray.py                      # 64 images, 2 prompts, random rd64-refined weights
    python benchmarks/bench_ray.py --images 16 --json benchmarks/results/ray.json

Each engine runs as the user runs it (a fresh `clipseg segment` process, the Ray engine starting its own local
cluster with all CPUs) on a small and a large set of the same images; the per-image rate is the marginal one,
(large - small images) / (large - small seconds), so model loading and Ray's start-up cancel out. The rate per CPU
slot divides by the CPU threads the engine runs the model on (local: torch's threads; Ray: actors x threads per
actor). Ray's start-up overhead is the extra wall time of the small run, and, separately, `ray.init` + shutdown
timed in this process. The outputs of both engines are compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PROMPTS = ("a round thing", "something red")


def cpu_name() -> str:
    if sys.platform == "linux":
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def make_images(folder: Path, count: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        image = Image.fromarray(rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)).resize(size)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = int(rng.integers(0, size[0] - 60)), int(rng.integers(0, size[1] - 60))
            draw.ellipse((x, y, x + 60, y + 60), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"img{index:03d}.jpg", quality=90)


def save_full_size_model(folder: Path) -> Path:
    from clipseg.model.config import CLIPSegConfig
    from clipseg.testing import random_model

    random_model(CLIPSegConfig(), seed=0).save_pretrained(folder)
    return folder


def run_cli(images: Path, out: Path, model: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "clipseg", "segment", str(images), "-o", str(out), "--model", str(model),
               "--device", "cpu", *[arg for prompt in PROMPTS for arg in ("-p", prompt)], *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return elapsed


def ray_init_seconds() -> float:
    import ray

    start = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.shutdown()
    return time.perf_counter() - start


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images in the large set")
    parser.add_argument("--small", type=int, default=8, help="images in the small set")
    parser.add_argument("--size", default="640x480", help="image size WxH")
    parser.add_argument("--workers", type=int, default=None, help="--workers of the Ray run (default: the CLI's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    import torch

    cpus = os.cpu_count() or 1
    workers = args.workers or max(1, cpus // 2)
    threads_local = torch.get_num_threads()
    slots = {"local": threads_local, "ray": workers * max(1, cpus // workers)}
    results: dict = {"cpu": cpu_name(), "cpus": cpus, "load_average_at_start": os.getloadavg(), "slots": slots}
    print(f"CPU: {results['cpu']} ({cpus} logical CPUs); load average {os.getloadavg()[0]:.1f}")
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as temporary:
        root = Path(temporary)
        model = save_full_size_model(root / "model")
        make_images(root / "large", args.images, (width, height))
        make_images(root / "small", args.small, (width, height))
        engines = {"local": ["--engine", "local"], "ray": ["--engine", "ray", "--workers", str(workers)]}
        seconds: dict[str, dict[str, float]] = {name: {} for name in engines}
        for size in ("small", "large"):  # the engines alternate, so a noisy neighbour slows both alike
            for name, extra in engines.items():
                seconds[name][size] = run_cli(root / size, root / f"out-{name}-{size}", model, extra)
                print(f"{name:5s} {size:5s}: {seconds[name][size]:7.1f} s", flush=True)
        identical = files(root / "out-local-large") == files(root / "out-ray-large")
        results["seconds"] = seconds
        results["outputs_identical"] = identical
        results["ray_init_shutdown_seconds"] = ray_init_seconds()
    extra_images = args.images - args.small
    rates = {name: extra_images / (s["large"] - s["small"]) for name, s in seconds.items()}
    per_slot = {name: rates[name] / slots[name] for name in rates}
    results.update(images_per_second=rates, images_per_second_per_slot=per_slot)
    results["ray_startup_overhead_seconds"] = seconds["ray"]["small"] - seconds["local"]["small"]
    results["load_average_at_end"] = os.getloadavg()
    print(f"\n{args.images} images {args.size}, {len(PROMPTS)} prompts, full ViT-B/16 rd64-refined (random weights)")
    print(f"{'engine':8s}{'slots':>6s}{'img/s':>9s}{'img/s/slot':>12s}{'wall, large set':>17s}")
    for name in engines:
        print(f"{name:8s}{slots[name]:6d}{rates[name]:9.2f}{per_slot[name]:12.3f}{seconds[name]['large']:15.1f} s")
    print(f"Ray per slot / local per slot: {per_slot['ray'] / per_slot['local']:.2f}x (target >= 0.85x)")
    print(f"Ray start-up overhead (small run, Ray - local): {results['ray_startup_overhead_seconds']:.1f} s; "
          f"ray.init + shutdown alone: {results['ray_init_shutdown_seconds']:.1f} s")
    print(f"outputs byte-identical: {identical}; load average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
