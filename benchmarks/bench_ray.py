"""`clipseg segment --engine ray` against `--engine local` on the same images, full ViT-B/16 size, in one run.

    python benchmarks/bench_ray.py                      # 64 images, 2 prompts, random rd64-refined weights
    python benchmarks/bench_ray.py --images 16 --json benchmarks/results/ray.json

Each engine runs as the user runs it (a fresh `clipseg segment` process, the Ray engine starting its own local
cluster with all CPUs) on a small and a large set of the same images; per-image figures are marginal ones,
(large - small) / (large - small images), so model loading and Ray's start-up cancel out. Two measures:

- CPU seconds per image: the CPU time of the CLI process and all its descendants (Ray's raylet, decode tasks and
  model actors included), read from /proc while it runs. On a shared machine this is the fair one: images per CPU
  second is the rate per CPU slot the engine reaches when it has its slots to itself.
- wall seconds: images/s per slot = rate / CPU threads running the model (local: torch's threads; Ray: actors x
  threads per actor); only meaningful on an idle machine.

Ray's start-up overhead is the extra wall time of the small run, and, separately, `ray.init` + shutdown timed in
this process. The outputs of both engines are compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process (Linux /proc)."""
    table = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
            except (OSError, IndexError, ValueError):
                continue
    return table


def _tree_cpu(root: int, table: dict[int, tuple[int, float]]) -> dict[int, float]:
    members, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, (parent, _) in table.items() if parent in frontier} - members
        members |= frontier
    return {pid: table[pid][1] for pid in members if pid in table}


def run_cli(images: Path, out: Path, model: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of one `clipseg segment` run."""
    command = [sys.executable, "-m", "clipseg", "segment", str(images), "-o", str(out), "--model", str(model),
               "--device", "cpu", *[arg for prompt in PROMPTS for arg in ("-p", prompt)], *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[int, float] = {}

    def sample() -> None:  # the latest CPU time of every process of the tree, also of those that ended since
        while process.poll() is None:
            seen.update(_tree_cpu(process.pid, _process_table()))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    elapsed = time.perf_counter() - start
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return elapsed, sum(seen.values())


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
    parser.add_argument("--concurrent", action="store_true", help="run both engines at the same time (shared host)")
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
        cpu: dict[str, dict[str, float]] = {name: {} for name in engines}
        for size in ("small", "large"):
            # Both engines at once (--concurrent) meet the same neighbours; else they alternate, per set.
            with ThreadPoolExecutor(max_workers=2 if args.concurrent else 1) as pool:
                runs = {
                    name: pool.submit(run_cli, root / size, root / f"out-{name}-{size}", model, extra)
                    for name, extra in engines.items()
                }
                for name, run in runs.items():
                    seconds[name][size], cpu[name][size] = run.result()
                    print(f"{name:5s} {size:5s}: {seconds[name][size]:7.1f} s wall, {cpu[name][size]:7.1f} s CPU",
                          flush=True)
        identical = files(root / "out-local-large") == files(root / "out-ray-large")
        results["seconds"] = seconds
        results["cpu_seconds"] = cpu
        results["outputs_identical"] = identical
        results["ray_init_shutdown_seconds"] = ray_init_seconds()
    extra_images = args.images - args.small
    rates = {name: extra_images / (s["large"] - s["small"]) for name, s in seconds.items()}
    per_slot = {name: rates[name] / slots[name] for name in rates}
    cpu_per_image = {name: (c["large"] - c["small"]) / extra_images for name, c in cpu.items()}
    results.update(images_per_second=rates, images_per_second_per_slot=per_slot, cpu_seconds_per_image=cpu_per_image)
    results["ray_startup_overhead_seconds"] = seconds["ray"]["small"] - seconds["local"]["small"]
    results["load_average_at_end"] = os.getloadavg()
    print(f"\n{args.images} images {args.size}, {len(PROMPTS)} prompts, full ViT-B/16 rd64-refined (random weights)")
    print(f"{'engine':8s}{'CPU s/img':>10s}{'img per CPU s':>15s}{'slots':>6s}{'img/s/slot (wall)':>19s}"
          f"{'wall, large set':>17s}")
    for name in engines:
        print(f"{name:8s}{cpu_per_image[name]:10.2f}{1 / cpu_per_image[name]:15.3f}{slots[name]:6d}"
              f"{per_slot[name]:19.3f}{seconds[name]['large']:15.1f} s")
    print(f"Ray / local, images per CPU second: {cpu_per_image['local'] / cpu_per_image['ray']:.2f}x "
          f"(target >= 0.85x); by wall time per slot: {per_slot['ray'] / per_slot['local']:.2f}x")
    print(f"Ray start-up overhead (small run, Ray - local): {results['ray_startup_overhead_seconds']:.1f} s; "
          f"ray.init + shutdown alone: {results['ray_init_shutdown_seconds']:.1f} s")
    print(f"outputs byte-identical: {identical}; load average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
