"""CPU benchmark: clipseg side by side with transformers' CLIPSegForImageSegmentation on identical weights.

    python benchmarks/bench_clipseg.py                         # fp32 vs transformers, bf16/int8, ONNX
    python benchmarks/bench_clipseg.py --json benchmarks/results/latest.json --repeats 7

Both models get the same random ViT-B/16 rd64-refined weights (transformers builds them, `save_pretrained` writes
them, `clipseg.load_model` reads them). The outputs are checked first (max |Δ logits| <= 1e-4 in fp32); then every
scenario runs both implementations in turn (interleaved, so a noisy neighbour slows both alike) after a warm-up,
and the minimum over the repetitions is kept. Times are printed as ratios ours / transformers.

transformers runs its documented processor-free path: `input_ids` padded to the longest prompt with an
`attention_mask`, `pixel_values` repeated once per prompt (its API pairs prompts 1:1 with images), under
`torch.inference_mode`. Ours runs through `clipseg.Predictor` (set_image + predict), which includes
preprocessing of the PIL image and the sigmoid; transformers is handed ready-made pixel values and returns logits.
Our model is prepared as the CLI prepares it, `apply_precision(model, "fp32")` (on the CPU: linear weights
pre-packed for oneDNN); the 1 x 1 case also times the model as `load_model` returns it, and with oneDNN turned off
(torch's BLAS for every linear, as transformers gets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import clipseg
from clipseg.image import preprocess
from clipseg.model.config import PRESETS, CLIPSegConfig
from clipseg.testing import random_transformers_clipseg
from clipseg.thresholds import binary_mask

PROMPTS = [
    "a red circle",
    "a photo of a blue square.",
    "something to sit on",
    "the yellow triangle on the left",
    "a cup",
    "green",
    "an image of a dog.",
    "the largest object in the picture",
]
IMAGE_SIZE = 352
LOGIT_TOLERANCE = 1e-4


def best_times(runs: dict[str, Callable[[], object]], *, repeats: int, warmup: int) -> dict[str, float]:
    """Minimum wall time (s) of each callable over `repeats` rounds; the callables alternate within a round."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def machine_description() -> dict[str, object]:
    lscpu = (
        subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout if sys.platform == "linux" else ""
    )
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "cpu": fields.get("Model name", platform.processor()).strip(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def backbone_flops(config: CLIPSegConfig, grid: tuple[int, int], n_images: int = 1) -> float:
    """FLOPs (multiply-add = 2) of the patch embedding and the blocks up to the deepest extract layer."""
    vision = config.vision
    tokens, width, mlp = grid[0] * grid[1] + 1, vision.width, vision.mlp_width
    projections = 2 * tokens * (4 * width * width + 2 * width * mlp)  # qkv, out, fc1, fc2
    attention = 4 * tokens * tokens * width  # q @ k^T and probabilities @ v
    patches = 2 * (tokens - 1) * 3 * vision.patch_size**2 * width
    blocks = max(config.decoder.extract_layers) + 1
    return n_images * (patches + blocks * (projections + attention))


GEMM_SHAPES = {"square_2048": (2048, 2048, 2048), "mlp_485x768x3072": (485, 768, 3072)}


def gemm_rate(repeats: int) -> dict[str, float]:
    """GFLOP/s of fp32 matrix products, a large square one (the machine's GEMM rate) and the backbone's MLP
    shape, each through torch's BLAS (`torch.mm`, what `F.linear` calls) and through oneDNN with a pre-packed
    weight (what our CPU path calls); the best of the two is the machine's fp32 rate as far as torch reaches it."""
    from clipseg.model import onednn

    rates = {}
    for name, (m, k, n) in GEMM_SHAPES.items():
        a, weight = torch.randn(m, k), torch.randn(n, k)
        runs = {f"blas_{name}": lambda: torch.mm(a, weight.t())}
        if onednn.available():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, m)
            runs[f"onednn_{name}"] = lambda packed=packed: onednn.linear(a, packed)
        for run_name, seconds in best_times(runs, repeats=repeats * 3, warmup=2).items():
            rates[run_name] = 2 * m * k * n / seconds / 1e9
        rates[name] = max(rate for run_name, rate in rates.items() if run_name.endswith(name) and run_name != name)
    return rates


def scene_images(count: int, seed: int = 0):
    from clipseg.data.synthetic import render_scene

    rng = np.random.default_rng(seed)
    return [render_scene(rng, size=(IMAGE_SIZE, IMAGE_SIZE), n_shapes=(2, 4)).image for _ in range(count)]


class Reference:
    """transformers' model driven the way its documentation shows, minus the processor."""

    def __init__(self, model, tokenizer, config: CLIPSegConfig) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config

    def pixels(self, images) -> torch.Tensor:
        return torch.stack([preprocess(i, IMAGE_SIZE, self.config.image_mean, self.config.image_std) for i in images])

    def text_inputs(self, prompts: list[str], pad_to_context: bool = False) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(prompts).ids
        if not pad_to_context:  # padding=True: to the longest prompt (padding="max_length" gives 77)
            ids = ids[:, : int((ids > 0).sum(dim=1).max())]
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}

    def text(self, pixel_values: torch.Tensor, prompts: list[str], pad_to_context: bool = False) -> torch.Tensor:
        repeats = len(prompts) // pixel_values.shape[0]
        inputs = self.text_inputs(prompts, pad_to_context)
        return self.model(pixel_values=pixel_values.repeat_interleave(repeats, dim=0), **inputs).logits

    def image_prompt(self, pixel_values: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, conditional_pixel_values=support).logits


class Ours:
    """clipseg through its Predictor: preprocessing, backbone once per image, prompts batched in the decoder,
    probabilities at the image size. A fresh Predictor per call, so no conditional vector comes from its cache."""

    def __init__(self, model) -> None:
        self.model = model

    def text(self, image, prompts: list[str]) -> torch.Tensor:
        predictor = clipseg.Predictor(self.model)
        predictor.set_image(image)
        return predictor.predict(prompts).probabilities

    def batch(self, images, prompt: str) -> list[torch.Tensor]:
        return [p.probabilities for p in clipseg.Predictor(self.model).predict_batch(images, prompt)]

    def image_prompt(self, pixel_values: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Model API, like transformers' `conditional_pixel_values` (the Predictor's ImagePrompt would add the
        visual prompt engineering, which transformers does not do)."""
        with torch.inference_mode():
            features = self.model.extract_features(pixel_values)
            conditional = self.model.encode_image(support)
            return self.model.decode(features, conditional, output_size=pixel_values.shape[-2:]).sigmoid()

    def logits(self, pixel_values: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Raw logits (P, H, W) of one image for the agreement checks."""
        with torch.inference_mode():
            features = self.model.extract_features(pixel_values)
            conditional = self.model.encode_text(self.model.tokenizer(prompts).ids)
            return self.model.decode(features, conditional, output_size=pixel_values.shape[-2:])[:, 0].float()


def agreement(candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """max |Δ probability| and IoU of the 0.5-thresholded masks (all prompts pooled)."""
    a, b = binary_mask(candidate, 0.5), binary_mask(reference, 0.5)
    union = (a | b).sum().item()
    return {
        "max_abs_probability_diff": (candidate - reference).abs().max().item(),
        "mask_iou": (a & b).sum().item() / union if union else 1.0,
    }


def peak_rss_mb(model_dir: Path, implementation: str) -> float:
    """Peak resident memory of a fresh process that loads the model and segments one image with one prompt."""
    output = subprocess.run(
        [sys.executable, __file__, "--child-rss", implementation, "--model-dir", str(model_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(output.strip().splitlines()[-1])


def child_rss(implementation: str, model_dir: Path) -> None:
    image = scene_images(1)[0]
    with torch.inference_mode():
        if implementation == "ours":
            from clipseg.precision import apply_precision

            Ours(apply_precision(clipseg.load_model(model_dir), "fp32")).text(image, PROMPTS[:1])
        else:
            from transformers import CLIPSegForImageSegmentation

            model = CLIPSegForImageSegmentation.from_pretrained(model_dir).eval()
            reference = Reference(model, clipseg.CLIPTokenizer.default(), CLIPSegConfig())  # ImageNet mean/std
            reference.text(reference.pixels([image]), PROMPTS[:1])
    print(peak_rss_of_this_process_mb())


def peak_rss_of_this_process_mb() -> float:
    """VmHWM (Linux): unlike getrusage's ru_maxrss, which keeps the parent's high-water mark across fork + exec."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "linux" else 1024**2)


def markdown_table(results: dict) -> str:
    """The README's results table."""
    targets = {"1 image x 1 prompt": "<= 0.65", "1 image x 8 prompts": "<= 0.12", "8 images x 1 prompt": "<= 0.85"}
    rows = ["| measurement | clipseg | transformers | ratio | target |", "|---|---|---|---|---|"]
    for name, t in results["timings"].items():
        rows.append(
            f"| {name} | {t['ours']:.3f} s | {t['transformers']:.3f} s | {t['ratio']:.2f} | {targets.get(name, '')} |"
        )
        if "ratio_vs_padded_77" in t:
            rows.append(
                f"| {name}, transformers' ids padded to 77 | {t['ours']:.3f} s | "
                f"{t['transformers_padded_77']:.3f} s | {t['ratio_vs_padded_77']:.2f} | |"
            )
        for variant, label in (("ours_unpacked", "weights not pre-packed"), ("ours_blas", "oneDNN off (BLAS)")):
            if variant in t:
                rows.append(
                    f"| {name}, ours with {label} | {t[variant]:.3f} s | {t['transformers']:.3f} s | "
                    f"{t[variant] / t['transformers']:.2f} | |"
                )
    backbone = results["backbone"]
    gemm = backbone["gemm_gflop_per_s"]
    rows.append(
        f"| backbone (10 blocks, {backbone['gflop']:.1f} GFLOP) | {backbone['gflop_per_s']:.0f} GFLOP/s | | "
        f"{backbone['fraction_of_gemm']:.0%} of the best 2048² GEMM ({gemm['square_2048']:.0f} GFLOP/s), "
        f"{backbone['gflop_per_s'] / gemm['mlp_485x768x3072']:.0%} of the best at its own MLP shape "
        f"({gemm['mlp_485x768x3072']:.0f}) | >= 80 % |"
    )
    if "blas_square_2048" in gemm:
        rows.append(
            f"| fp32 GEMM 2048², torch's BLAS / oneDNN pre-packed | {gemm['blas_square_2048']:.0f} / "
            f"{gemm.get('onednn_square_2048', float('nan')):.0f} GFLOP/s | | | |"
        )
    if "peak_rss_mb" in results:
        rss = results["peak_rss_mb"]
        rows.append(
            f"| peak RSS, 1 image x 1 prompt | {rss['ours']:.0f} MB | {rss['transformers']:.0f} MB | "
            f"{rss['ours'] / rss['transformers']:.2f} | <= 1300 MB |"
        )
    load = results["load_seconds"]
    rows.append(
        f"| model load | {load['ours']:.2f} s | {load['transformers']:.2f} s | "
        f"{load['ours'] / load['transformers']:.2f} | |"
    )
    for precision, p in results.get("precision", {}).items():
        rows.append(
            f"| {precision} vs our fp32, 1 image x 1 / x 8 prompts | {p['seconds_1x1']:.3f} / "
            f"{p['seconds_1x8']:.3f} s | | speed-up {p['speedup_1x1']:.2f}x / {p['speedup_1x8']:.2f}x; "
            f"max Δp {p['max_abs_probability_diff']:.3f}, mask IoU {p['mask_iou']:.3f} | >= 1.8x |"
        )
    if "onnx" in results:
        o = results["onnx"]
        rows.append(
            f"| ONNX Runtime vs our PyTorch, 1 image x 1 / x 8 prompts | {o['seconds_1x1']:.3f} / "
            f"{o['seconds_1x8']:.3f} s | | {o['ratio_onnx_over_pytorch_1x1']:.2f} / "
            f"{o['ratio_onnx_over_pytorch_1x8']:.2f}; max Δ logits {o['max_abs_logit_diff_vs_pytorch']:.1e} | |"
        )
    if "compile" in results:
        c = results["compile"]
        rows.append(
            f"| torch.compile (backbone) vs eager, 1 image x 1 prompt | | | speed-up {c['speedup_1x1']:.2f}x "
            f"(compile {c['compile_seconds']:.0f} s) | |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="rd64-refined", choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--skip", nargs="*", default=[], choices=["precision", "onnx", "compile", "rss"])
    parser.add_argument("--table", type=Path, help="print the README table of a saved JSON result and exit")
    parser.add_argument("--child-rss", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_rss:
        child_rss(args.child_rss, args.model_dir)
        return
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    with tempfile.TemporaryDirectory(prefix="clipseg-bench-") as workdir:
        results = run(args, Path(workdir))
    print(json.dumps(results["summary"], indent=2))
    print(markdown_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, args.json)


def blas(run: Callable[[], object]) -> object:
    """`run` with oneDNN turned off: every fp32 linear through torch's BLAS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about TF32 on Intel GPUs whenever the flags are set
        with torch.backends.mkldnn.flags(enabled=False):
            return run()


def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    import transformers
    from transformers import CLIPSegForImageSegmentation

    from clipseg.precision import apply_precision

    transformers.utils.logging.disable_progress_bar()

    repeats, warmup = args.repeats, args.warmup
    results: dict[str, object] = {
        "machine": machine_description(),
        "preset": args.preset,
        "repeats": repeats,
        "load_average_at_start": os.getloadavg(),
    }
    print(f"machine: {results['machine']}")

    model_dir = workdir / "hf"
    random_transformers_clipseg(PRESETS[args.preset], seed=1).save_pretrained(model_dir)
    loads = best_times(
        {
            "ours": lambda: clipseg.load_model(model_dir),
            "transformers": lambda: CLIPSegForImageSegmentation.from_pretrained(model_dir).eval(),
        },
        repeats=3,
        warmup=1,
    )
    results["load_seconds"] = loads
    ours_model = apply_precision(clipseg.load_model(model_dir), "fp32")
    unpacked = Ours(clipseg.load_model(model_dir))
    reference = Reference(
        CLIPSegForImageSegmentation.from_pretrained(model_dir).eval(), ours_model.tokenizer, ours_model.config
    )
    ours = Ours(ours_model)

    images = scene_images(9)
    query, batch = images[0], images[1:9]
    pixels, batch_pixels = reference.pixels([query]), reference.pixels(batch)
    support = reference.pixels(images[1:2])

    # Same outputs first: every prompt on the query image, and an image prompt.
    with torch.inference_mode():
        expected = reference.text(pixels, PROMPTS)
        expected_image_prompt = reference.image_prompt(pixels, support).sigmoid()
    logit_diff = (ours.logits(pixels, PROMPTS) - expected).abs().max().item()
    image_prompt_diff = (ours.image_prompt(pixels, support)[:, 0] - expected_image_prompt).abs().max().item()
    results["image_prompt_max_abs_probability_diff"] = image_prompt_diff
    results["max_abs_logit_diff"] = logit_diff
    print(
        f"max |Δ logits| ours vs transformers: {logit_diff:.2e} (tolerance {LOGIT_TOLERANCE:.0e}); "
        f"image prompt max |Δ probability| {image_prompt_diff:.2e}"
    )
    if logit_diff > LOGIT_TOLERANCE or image_prompt_diff > LOGIT_TOLERANCE:
        raise SystemExit("outputs disagree: not benchmarking")

    scenarios = {
        "1 image x 1 prompt": (lambda: ours.text(query, PROMPTS[:1]), lambda: reference.text(pixels, PROMPTS[:1])),
        "1 image x 8 prompts": (lambda: ours.text(query, PROMPTS), lambda: reference.text(pixels, PROMPTS)),
        "8 images x 1 prompt": (
            lambda: ours.batch(batch, PROMPTS[0]),
            lambda: reference.text(batch_pixels, PROMPTS[:1] * len(batch)),
        ),
        "1 image x image prompt": (
            lambda: ours.image_prompt(pixels, support),
            lambda: reference.image_prompt(pixels, support),
        ),
    }
    timings = {}
    with torch.inference_mode():
        for name, (run_ours, run_reference) in scenarios.items():
            runs = {"ours": run_ours, "transformers": run_reference}
            if name == "1 image x 1 prompt":  # also against ids padded to 77, as padding="max_length" gives
                runs["transformers_padded_77"] = lambda: reference.text(pixels, PROMPTS[:1], pad_to_context=True)
                runs["ours_unpacked"] = lambda: unpacked.text(query, PROMPTS[:1])
                runs["ours_blas"] = lambda: blas(lambda: unpacked.text(query, PROMPTS[:1]))
            best = best_times(runs, repeats=repeats, warmup=warmup)
            timings[name] = {**best, "ratio": best["ours"] / best["transformers"]}
            print(
                f"{name:24s} ours {best['ours']:.3f} s  transformers {best['transformers']:.3f} s  "
                f"ratio {timings[name]['ratio']:.3f}"
            )
            if "transformers_padded_77" in best:
                timings[name]["ratio_vs_padded_77"] = best["ours"] / best["transformers_padded_77"]
                print(
                    f"{'':24s} transformers with ids padded to 77: {best['transformers_padded_77']:.3f} s  "
                    f"ratio {timings[name]['ratio_vs_padded_77']:.3f}\n"
                    f"{'':24s} ours, weights not pre-packed: {best['ours_unpacked']:.3f} s; "
                    f"oneDNN off (BLAS): {best['ours_blas']:.3f} s"
                )
        backbone_seconds = best_times(
            {"backbone": lambda: ours_model.extract_features(pixels)}, repeats=repeats, warmup=warmup
        )["backbone"]
    results["timings"] = timings

    grid = ours_model.visual.grid_for(IMAGE_SIZE, IMAGE_SIZE)
    flops = backbone_flops(ours_model.config, grid)
    gemm = gemm_rate(repeats)
    achieved = flops / backbone_seconds / 1e9
    results["backbone"] = {
        "gflop": flops / 1e9,
        "seconds": backbone_seconds,
        "gflop_per_s": achieved,
        "gemm_gflop_per_s": gemm,
        "fraction_of_gemm": achieved / gemm["square_2048"],
    }
    print(
        f"backbone: {flops / 1e9:.1f} GFLOP in {backbone_seconds:.3f} s = {achieved:.0f} GFLOP/s; best GEMM "
        f"{gemm['square_2048']:.0f} GFLOP/s (square), {gemm['mlp_485x768x3072']:.0f} (MLP shape) -> "
        f"{achieved / gemm['square_2048']:.0%}; all GEMM rates: {gemm}"
    )

    if "rss" not in args.skip:
        results["peak_rss_mb"] = {name: peak_rss_mb(model_dir, name) for name in ("ours", "transformers")}
        print(f"peak RSS (1 image x 1 prompt, fresh process): {results['peak_rss_mb']}")

    reference_probabilities = ours.logits(pixels, PROMPTS).sigmoid()
    if "precision" not in args.skip:
        results["precision"] = precision_results(
            model_dir, ours_model, query, pixels, reference_probabilities, repeats, warmup
        )
    if "onnx" not in args.skip:
        results["onnx"] = onnx_results(model_dir, workdir, ours_model, query, pixels, repeats, warmup)
    if "compile" not in args.skip:
        results["compile"] = compile_results(
            model_dir, ours_model, query, pixels, reference_probabilities, repeats, warmup
        )

    results["load_average_at_end"] = os.getloadavg()
    results["summary"] = summary(results)
    return results


def precision_results(model_dir, fp32_model, query, pixels, reference_probabilities, repeats, warmup):
    from clipseg.precision import apply_precision

    fp32 = Ours(fp32_model)
    out = {}
    for precision in ("bf16", "int8"):
        model = apply_precision(clipseg.load_model(model_dir), precision)
        candidate = Ours(model)
        out[precision] = agreement(Ours(model).logits(pixels, PROMPTS).sigmoid(), reference_probabilities)
        with torch.inference_mode():
            for name, prompts in (("1x1", PROMPTS[:1]), ("1x8", PROMPTS)):
                best = best_times(
                    {
                        "fp32": lambda prompts=prompts: fp32.text(query, prompts),
                        precision: lambda model=candidate, prompts=prompts: model.text(query, prompts),
                    },
                    repeats=repeats,
                    warmup=warmup,
                )
                out[precision][f"speedup_{name}"] = best["fp32"] / best[precision]
                out[precision][f"seconds_{name}"] = best[precision]
        print(f"{precision}: {out[precision]}")
    return out


def onnx_results(model_dir, workdir, fp32_model, query, pixels, repeats, warmup):
    from clipseg.export.onnx import export_onnx_model
    from clipseg.export.runtime import OnnxModel

    start = time.perf_counter()
    export_onnx_model(fp32_model, workdir / "onnx")
    export_seconds = time.perf_counter() - start
    onnx_model = OnnxModel(workdir / "onnx")
    expected = Ours(fp32_model).logits(pixels, PROMPTS)
    got = Ours(onnx_model).logits(pixels, PROMPTS)
    out = {"export_seconds": export_seconds, "max_abs_logit_diff_vs_pytorch": (got - expected).abs().max().item()}
    fp32, candidate = Ours(fp32_model), Ours(onnx_model)
    with torch.inference_mode():
        for name, prompts in (("1x1", PROMPTS[:1]), ("1x8", PROMPTS)):
            best = best_times(
                {
                    "pytorch": lambda prompts=prompts: fp32.text(query, prompts),
                    "onnx": lambda prompts=prompts: candidate.text(query, prompts),
                },
                repeats=repeats,
                warmup=warmup,
            )
            out[f"ratio_onnx_over_pytorch_{name}"] = best["onnx"] / best["pytorch"]
            out[f"seconds_{name}"] = best["onnx"]
    print(f"onnx: {out}")
    return out


def compile_results(model_dir, fp32_model, query, pixels, reference_probabilities, repeats, warmup):
    """torch.compile (inductor, weights frozen into the graph) of the backbone, the part that dominates."""
    import torch._inductor.config

    torch._inductor.config.freezing = True
    compiled = clipseg.load_model(model_dir)
    compiled.visual.forward_features = torch.compile(compiled.visual.forward_features)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled.extract_features(pixels)  # compiles (inductor needs a C++ compiler; --skip compile otherwise)
    out = {"compile_seconds": time.perf_counter() - start}
    out |= agreement(Ours(compiled).logits(pixels, PROMPTS).sigmoid(), reference_probabilities)
    eager, candidate = Ours(fp32_model), Ours(compiled)
    with torch.inference_mode():
        best = best_times(
            {"eager": lambda: eager.text(query, PROMPTS[:1]), "compiled": lambda: candidate.text(query, PROMPTS[:1])},
            repeats=repeats,
            warmup=warmup,
        )
    out["speedup_1x1"] = best["eager"] / best["compiled"]
    print(f"torch.compile: {out}")
    return out


def summary(results: dict) -> dict[str, object]:
    timings = results["timings"]
    targets = {"1 image x 1 prompt": 0.65, "1 image x 8 prompts": 0.12, "8 images x 1 prompt": 0.85}
    out = {name: {"ratio": round(t["ratio"], 3), "target": targets.get(name)} for name, t in timings.items()}
    out["backbone_fraction_of_gemm"] = round(results["backbone"]["fraction_of_gemm"], 3)
    out["max_abs_logit_diff"] = results["max_abs_logit_diff"]
    if "peak_rss_mb" in results:
        out["peak_rss_mb"] = results["peak_rss_mb"]
    out["load_seconds"] = results["load_seconds"]
    return out


if __name__ == "__main__":
    main()
