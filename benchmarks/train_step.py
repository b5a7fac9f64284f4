"""Throughput of one CLIPSeg training step at full size (ViT-B/16 CLIP, rd64 decoder) on this machine.

    python benchmarks/train_step.py                              # batch 8 at 352 px, fp32 and bf16
    python benchmarks/train_step.py --batch-size 4 --steps 5 --precision fp32 --json train_step.json

A step is what `Trainer` runs per batch: CLIP features (no autograd), text embeddings of every prompt, image
embeddings of the support images (PC+; only with --visual), the decoder forward and backward, AdamW and the LR
schedule. Data loading is excluded (the batch is made up in memory). Weights are random: speed does not depend on
their values. The machine may be shared, so the load average is recorded and the fastest step is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clipseg.training.config import TrainConfig
from clipseg.training.trainer import Trainer


def make_batch(batch_size: int, image_size: int, visual: bool) -> dict:
    """A collated batch of the training sample contract; with `visual`, every sample mixes in a support image."""
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
        "target": (torch.rand(batch_size, 1, image_size, image_size, generator=generator) > 0.8).float(),
        "text": [f"a photo of a red circle number {k}." for k in range(batch_size)],
        "support": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
        "text_weight": torch.full((batch_size,), 0.25 if visual else 1.0, dtype=torch.float64),
    }


def time_steps(precision: str, args: argparse.Namespace, visual: bool) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        config = TrainConfig.from_dict({
            "name": "train-step-benchmark",
            "model": {"preset": args.preset, "clip": "random", "architecture": {"decoder": {"extract_layers": [3, 7, 9]}}},
            "data": {"image_size": args.image_size},
            "optim": {"batch_size": args.batch_size, "max_iterations": 1000, "precision": precision},
            "run": {"output_dir": output_dir, "device": args.device, "progress": False},
        })
        trainer = Trainer(config, train_dataset=[None])  # batches are handed to the step directly
        trainer.model.decoder.train()
        batch = make_batch(args.batch_size, args.image_size, visual)
        trainer._train_step(batch)  # warm-up
        seconds = []
        for _ in range(args.steps):
            start = time.perf_counter()
            trainer._train_step(batch)
            seconds.append(time.perf_counter() - start)
    mean = statistics.mean(seconds)
    return {
        "precision": precision,
        "visual": visual,
        "step_seconds_mean": mean,
        "step_seconds_min": min(seconds),
        "samples_per_second": args.batch_size / mean,
        "samples_per_second_best": args.batch_size / min(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="rd64", help="decoder preset (rd64, rd64-refined, rd16, rd128)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=352)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    load_before = os.getloadavg()
    results = []
    for precision in args.precision:
        for visual in (False, True):
            result = time_steps(precision, args, visual)
            results.append(result)
            kind = "text + support images (PC+)" if visual else "text prompts only (PC)"
            print(
                f"{args.preset} batch {args.batch_size} at {args.image_size} px, {precision}, {kind}: "
                f"{result['step_seconds_mean']:.2f} s/step, {result['samples_per_second']:.2f} samples/s "
                f"(best step {result['samples_per_second_best']:.2f} samples/s)"
            )
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
        "results": results,
    }
    print(f"load average before {load_before[0]:.2f}, after {report['machine']['load_average_after'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
