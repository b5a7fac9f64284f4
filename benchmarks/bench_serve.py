"""Server benchmark: `clipseg serve` over HTTP on loopback, with the full ViT-B/16 rd64-refined size (random weights).

    python benchmarks/bench_serve.py                       # latency, throughput, schemathesis
    python benchmarks/bench_serve.py --json benchmarks/results/serve.json --rounds 3 --latency-requests 40

1. Interactive latency: a 1920x1080 image uploaded once (POST /v1/images), then each request a new prompt on its
   image_id (POST /v1/segment, format=json with COCO RLE, and format=png): p50 / p95 of the client's wall time,
   beside the same work in-process (`Predictor.predict` for one prompt on the set image + the same encoding).
2. Throughput: 16 concurrent clients, each sending its own 640x480 image with 1-3 prompts (format=json), a new
   image every round; images/s against `Predictor.predict_batch` in-process on the same images (2 prompts each,
   masks read at the threshold), and against 1 client sending the same requests one after another.
   In-process work runs on a worker thread, as the server's batcher does.
3. schemathesis against /openapi.json (a tiny model, so that thousands of generated requests run quickly): every
   answer must be below 500.

The server runs as its own process (`python -m clipseg serve`), the clients in this one. Side-by-side ratios are
measured in one run; the CPU model and the load average are printed with them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_clipseg import machine_description  # noqa: E402

import clipseg  # noqa: E402
from clipseg.model.config import PRESETS  # noqa: E402
from clipseg.outputs import mask_image, png_bytes, rle_annotation  # noqa: E402
from clipseg.precision import apply_precision  # noqa: E402
from clipseg.predictor import Predictor  # noqa: E402
from clipseg.testing import TINY_CONFIG, random_model  # noqa: E402
from clipseg.thresholds import binary_mask  # noqa: E402

THRESHOLD = 0.4
WORDS = ["cat", "dog", "cup", "chair", "tree", "car", "road", "sky", "lamp", "book", "shoe", "door", "window", "bird"]


def photo_like(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG with smooth structure (blurred noise plus shapes), so encoding costs what a photo costs."""
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m clipseg serve` on a free port, for the duration of a `with` block."""

    def __init__(self, model_dir: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(Path(clipseg.__file__).parents[1])}
        self.log = open(log, "w")
        command = [sys.executable, "-m", "clipseg", "serve", "--model", str(model_dir), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--device", "cpu", *extra], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"clipseg serve exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("clipseg serve did not become ready in 300 s")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        self.log.close()


def on_worker_thread(function, *args):  # noqa: ANN001, ANN201
    """Run `function` on a fresh thread, as the server's batcher runs the model. (On a heavily loaded machine torch
    called from the main thread was measured 10-20x slower than from another thread, which would flatter the
    server.)"""
    result = []
    thread = threading.Thread(target=lambda: result.append(function(*args)))
    thread.start()
    thread.join()
    return result[0] if result else None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency(server: Server, predictor: Predictor, requests: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    image = photo_like(rng, 1920, 1080)
    results: dict[str, object] = {}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        started = time.perf_counter()
        image_id = client.post("/v1/images", files={"image": ("hd.jpg", image, "image/jpeg")}).json()["image_id"]
        results["upload_ms"] = (time.perf_counter() - started) * 1000
        counter = iter(range(10**6))

        def ask(answer: str) -> float:
            prompt = f"a {WORDS[next(counter) % len(WORDS)]} number {next(counter)}"  # never cached
            started = time.perf_counter()
            response = client.post("/v1/segment", data={"image_id": image_id, "prompt": prompt, "format": answer})
            response.raise_for_status()
            return (time.perf_counter() - started) * 1000

        for answer in ("json", "png"):
            for _ in range(3):
                ask(answer)  # warm-up
            times = [ask(answer) for _ in range(requests)]
            results[f"http_{answer}_ms"] = {"p50": percentile(times, 50), "p95": percentile(times, 95)}

    on_worker_thread(predictor.set_image, Image.open(io.BytesIO(image)))
    in_process = {"json": [], "png": []}

    def one(prompt: str, answer: str) -> None:
        prediction = predictor.predict([prompt])
        probabilities = prediction.probability(0).numpy()
        mask = binary_mask(probabilities, THRESHOLD)
        if answer == "json":
            rle_annotation(mask, probabilities, prompt=prompt, threshold=THRESHOLD)
        else:
            png_bytes(mask_image(mask))

    for index in range(requests + 3):
        for answer in ("json", "png"):
            started = time.perf_counter()
            on_worker_thread(one, f"in-process {answer} {index}", answer)
            if index >= 3:
                in_process[answer].append((time.perf_counter() - started) * 1000)
    for answer, times in in_process.items():
        results[f"in_process_{answer}_ms"] = {"p50": percentile(times, 50), "p95": percentile(times, 95)}
    return results


def throughput(server: Server, predictor: Predictor, clients: int, rounds: int) -> dict[str, object]:
    rng = np.random.default_rng(1)
    jobs = []
    for index in range(clients * rounds):
        prompts = [f"a {WORDS[(index + k) % len(WORDS)]}" for k in range(1 + index % 3)]
        jobs.append((photo_like(rng, 640, 480), prompts))

    def send(client: httpx.Client, job) -> None:
        image, prompts = job
        response = client.post("/v1/segment", data={"prompt": prompts}, files={"image": ("i.jpg", image, "image/jpeg")})
        response.raise_for_status()

    def concurrent(batch) -> float:
        local = threading.local()

        def one(job) -> None:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=server.url, timeout=300)
            send(local.client, job)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, batch))
        return time.perf_counter() - started

    warm = [(photo_like(rng, 640, 480), ["warm-up"]) for _ in range(clients)]
    concurrent(warm)
    many = concurrent(jobs)
    with httpx.Client(base_url=server.url, timeout=300) as client:
        fresh = [(photo_like(rng, 640, 480), prompts) for _, prompts in jobs]  # not cached by the server
        started = time.perf_counter()
        for job in fresh:
            send(client, job)
        single = time.perf_counter() - started

    images = [Image.open(io.BytesIO(image)).convert("RGB") for image, _ in jobs]

    def batches() -> None:
        for start in range(0, len(images), clients):
            for prediction in predictor.predict_batch(images[start : start + clients], ["a cat", "a dog"]):
                prediction.masks(THRESHOLD)

    on_worker_thread(predictor.predict_batch, images[:clients], ["warm-up", "a cat"])
    started = time.perf_counter()
    on_worker_thread(batches)
    in_process = time.perf_counter() - started
    count = len(jobs)
    return {
        "images": count,
        "clients": clients,
        "images_per_s_concurrent": count / many,
        "images_per_s_one_client": count / single,
        "images_per_s_predict_batch": count / in_process,
        "concurrent_vs_predict_batch": in_process / many,
        "concurrent_vs_one_client": single / many,
    }


def schemathesis_check(workdir: Path, examples: int) -> dict[str, object]:
    tiny = workdir / "tiny"
    random_model(TINY_CONFIG).save_pretrained(tiny)
    command = shutil.which("schemathesis") or shutil.which("st")
    if command is None:
        return {"skipped": "schemathesis is not installed (pip install schemathesis)"}
    with Server(tiny, workdir / "schemathesis-server.log") as server:
        run = subprocess.run(
            [command, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error", "-n", str(examples),
             "--seed", "1", "--request-timeout", "60"],
            capture_output=True, text=True, check=False,
        )
    summary = [line.strip() for line in run.stdout.splitlines() if "generated" in line or "passed" in line]
    return {"exit_status": run.returncode, "no_5xx": run.returncode == 0, "summary": summary[-1] if summary else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="images per client in the throughput run")
    parser.add_argument("--latency-requests", type=int, default=30)
    parser.add_argument("--schemathesis-examples", type=int, default=30)
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "throughput", "schemathesis"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results: dict[str, object] = {"machine": machine_description(), "load_average_at_start": os.getloadavg()}
    print(f"machine: {results['machine']}")
    print(f"load average at start: {results['load_average_at_start']}")
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        if not {"latency", "throughput"} <= set(args.skip):
            model_dir = workdir / "full"
            random_model(PRESETS["rd64-refined"], seed=0).save_pretrained(model_dir)
            predictor = Predictor(apply_precision(clipseg.load_model(model_dir), "fp32"))  # as the server loads it
            # A generous request timeout: on a busy shared machine a full-size batch can take longer than 30 s.
            with Server(model_dir, workdir / "server.log", "--timeout", "600") as server:
                if "latency" not in args.skip:
                    results["latency"] = latency(server, predictor, args.latency_requests)
                    print("latency (ms):", json.dumps(results["latency"], indent=1))
                if "throughput" not in args.skip:
                    results["throughput"] = throughput(server, predictor, args.clients, args.rounds)
                    print("throughput:", json.dumps(results["throughput"], indent=1))
        if "schemathesis" not in args.skip:
            results["schemathesis"] = schemathesis_check(workdir, args.schemathesis_examples)
            print("schemathesis:", results["schemathesis"])
    results["load_average_at_end"] = os.getloadavg()
    print(f"load average at end: {results['load_average_at_end']}; torch threads {torch.get_num_threads()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
