"""`clipseg serve` as a user runs it: a real process on a free loopback port, driven over HTTP by many concurrent
clients (broken requests mixed in) and by a real browser (Playwright driving Debian's chromium) through the page's
data-testid hooks."""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from predictor_fixtures import photo, save_tiny_model
from serve_fixtures import ServerThread, decoded, encoded, free_port, wait_until

import clipseg

pytest.importorskip("fastapi")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m clipseg serve` on a free port with a tiny random model; stopped with SIGINT at the end."""
    root = tmp_path_factory.mktemp("serve")
    model_dir = save_tiny_model(root / "tiny")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(clipseg.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    env.pop("CLIPSEG_API_KEY", None)
    log = open(root / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "clipseg", "serve", "--model", str(model_dir), "--port", str(port), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (root / "server.log").read_text()
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=120, what="clipseg serve to be ready")
    yield base, process, root
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0, (root / "server.log").read_text()[-2000:]
    log.close()


def broken_requests(image: bytes) -> list[dict]:
    """Requests every one of which the server must refuse with a 4xx."""
    big_prompts = [("prompt", (None, f"p{i}")) for i in range(70)]
    return [
        {"data": {"prompt": "a", "threshold": "2"}, "files": {"image": ("a.png", image, "image/png")}},
        {"data": {"prompt": "a"}, "files": {"image": ("a.png", b"GIF89a broken", "image/gif")}},
        {"data": {"prompt": "a"}, "files": {"image": ("a.png", image[: len(image) // 3], "image/png")}},
        {"data": {"prompt": " "}, "files": {"image": ("a.png", image, "image/png")}},
        {"data": {"prompt": "a", "image_id": "e" * 64}},
        {"data": {"prompt": "a", "format": "tiff"}, "files": {"image": ("a.png", image, "image/png")}},
        {"data": {"prompt": "x" * 5000}, "files": {"image": ("a.png", image, "image/png")}},
        {"files": big_prompts},
        {
            "content": b"--nope\r\nContent-Disposition: form-data\r\n\r\nx",
            "headers": {"Content-Type": "multipart/form-data; boundary=nope"},
        },
        {"content": b"\x00\x01garbage", "headers": {"Content-Type": "multipart/form-data; boundary=zz"}},
        {"json": {"prompt": "a"}},
        {"data": {"prompt": ["a", "b"], "format": "png"}, "files": {"image": ("a.png", image, "image/png")}},
    ]


def test_300_requests_from_16_clients_with_broken_ones_mixed_in(server):
    base, process, _ = server
    rng = np.random.default_rng(0)
    images = [encoded(rng.integers(0, 256, (48 + 4 * i, 64, 3), dtype=np.uint8)) for i in range(16)]
    with httpx.Client(base_url=base, timeout=60) as client:
        uploads = [client.post("/v1/images", files={"image": ("i.png", image, "image/png")}) for image in images[:4]]
        ids = [answer.json()["image_id"] for answer in uploads]
    plan = []
    for index in range(300):
        kind = index % 5
        if kind == 0:
            plan.append(("valid", {"data": {"image_id": ids[index % 4], "prompt": ["a cat", f"thing {index % 7}"]}}))
        elif kind == 1:
            image = images[index % 16]
            request = {"data": {"prompt": "a dog", "format": "png"}, "files": {"image": ("i.png", image, "image/png")}}
            plan.append(("valid", request))
        elif kind == 2:
            plan.append(("valid", {"data": {"image_id": ids[index % 4], "prompt": "sky", "format": "float32"}}))
        else:
            options = broken_requests(images[index % 16])
            plan.append(("broken", options[index % len(options)]))
    random.Random(1).shuffle(plan)
    local = threading.local()

    def send(item):
        kind, request = item
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base, timeout=60)
        answer = local.client.post("/v1/segment", **request)
        return kind, answer.status_code

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, plan))
    statuses = Counter(status for _, status in results)
    assert not [s for s in statuses if s >= 500 and s != 503], statuses
    assert all(status in (200, 503) for kind, status in results if kind == "valid"), statuses
    assert all(400 <= status < 500 for kind, status in results if kind == "broken"), statuses
    assert statuses[200] >= 100, statuses  # the queue (64) holds 16 clients: almost nothing is turned away
    assert process.poll() is None
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    after = httpx.post(f"{base}/v1/segment", data={"image_id": ids[0], "prompt": "still alive"}, timeout=60)
    assert after.status_code == 200
    metrics = httpx.get(f"{base}/metrics").text
    assert 'clipseg_requests_total{route="/v1/segment",status="200"}' in metrics


def _skip_without_browser() -> None:
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (scripts/install.sh installs it when run as root)")


def test_the_page_in_a_real_browser(server, tmp_path):
    _skip_without_browser()
    from playwright.sync_api import sync_playwright

    base, _, root = server
    photo_path = tmp_path / "chelsea.png"
    Image.fromarray(photo("chelsea")).save(photo_path)
    requests: list[str] = []

    def api_png(prompt: str, threshold: str, negative: list[str] = ()) -> bytes:
        answer = httpx.post(
            f"{base}/v1/segment",
            data={"prompt": prompt, "threshold": threshold, "format": "png", "negative": list(negative)},
            files={"image": ("chelsea.png", photo_path.read_bytes(), "image/png")},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        return answer.content

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(base + "/")
            status = page.get_by_test_id("status")
            result = page.get_by_test_id("result")

            def canvas() -> str:
                return result.evaluate("canvas => canvas.toDataURL()")

            def wait_ready(count: int) -> None:
                page.wait_for_function(
                    "count => document.querySelector('[data-testid=status]').textContent === 'ready'"
                    " && document.querySelectorAll('#heatmaps figure').length === count",
                    arg=count, timeout=30000,
                )

            page.get_by_test_id("image-input").set_input_files(str(photo_path))
            page.wait_for_function("document.querySelector('[data-testid=status]').textContent === 'add a prompt'")
            plain = canvas()
            prompt = page.get_by_test_id("prompt-input")
            prompt.fill("a cat")
            prompt.press("Enter")
            wait_ready(1)
            one = canvas()
            prompt.fill("a dog")
            prompt.press("Enter")
            wait_ready(2)
            two = canvas()
            assert plain != one != two
            assert page.get_by_test_id("prompt-chip").count() == 2
            assert "ms" in page.get_by_test_id("latency").text_content()
            uploads = [url for url in requests if url.endswith("/v1/images")]
            segments = [url for url in requests if url.endswith("/v1/segment")]
            assert len(uploads) == 1 and len(segments) == 2  # the image once, one decoder call per prompt

            before = len(requests)
            page.get_by_test_id("threshold").fill("0.7")
            page.wait_for_timeout(400)  # the download link is refreshed 150 ms after the slider stops
            assert len(requests) == before, requests[before:]  # thresholding happens in the page
            assert canvas() != two
            # The link of the selected prompt (the last added) holds the mask computed in the page: exactly the
            # server's at the same threshold.
            href = page.get_by_test_id("download").get_attribute("href")
            local = decoded(base64.b64decode(href.split(",", 1)[1]))
            expected = decoded(api_png("a dog", "0.7")) > 0
            np.testing.assert_array_equal(local[..., 0] > 0, expected)
            with page.expect_download() as download:
                page.get_by_test_id("download").click()
            assert Path(download.value.path()).read_bytes() == api_png("a dog", "0.7")

            page.get_by_test_id("prompt-chip").filter(has_text="a cat").click()
            page.get_by_test_id("threshold").fill("0.33")
            with page.expect_download() as download:
                page.get_by_test_id("download").click()
            assert Path(download.value.path()).read_bytes() == api_png("a cat", "0.33")

            negative = page.get_by_test_id("negative-input")
            negative.fill("a sofa")
            negative.press("Enter")
            page.wait_for_function("document.querySelector('[data-testid=status]').textContent === 'segmenting…'"
                                   " || document.querySelector('[data-testid=status]').textContent === 'ready'")
            wait_ready(2)
            page.wait_for_timeout(300)
            href = page.get_by_test_id("download").get_attribute("href")
            local = decoded(base64.b64decode(href.split(",", 1)[1]))
            np.testing.assert_array_equal(local[..., 0] > 0, decoded(api_png("a cat", "0.33", ["a sofa"])) > 0)

            page.get_by_test_id("prompt-chip").filter(has_text="a dog").get_by_role("button").click()
            assert page.get_by_test_id("prompt-chip").count() == 1
            page.screenshot(path=str(tmp_path / "page.png"))  # a test artifact, kept out of the repository
            assert errors == []
        finally:
            browser.close()


def test_the_page_asks_once_for_the_api_key(tmp_path):
    _skip_without_browser()
    from playwright.sync_api import sync_playwright

    from clipseg.predictor import Predictor
    from clipseg.serve import ServeSettings, create_app

    key = "page-key-123"
    model_dir = save_tiny_model(tmp_path / "tiny")
    app = create_app(lambda: Predictor(clipseg.load_model(model_dir)), ServeSettings(api_key=key))
    photo_path = tmp_path / "coffee.png"
    Image.fromarray(photo("coffee")).save(photo_path)
    with ServerThread(app) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            asked: list[str] = []
            sent: list[str | None] = []

            def answer(dialog) -> None:  # noqa: ANN001
                asked.append(dialog.message)
                dialog.accept(key)

            page.on("dialog", answer)
            page.on("request", lambda request: sent.append(request.headers.get("authorization")))
            page.goto(server.url + "/")
            page.get_by_test_id("image-input").set_input_files(str(photo_path))
            page.get_by_test_id("prompt-input").fill("a cup")
            page.get_by_test_id("prompt-input").press("Enter")
            page.wait_for_function("document.querySelector('[data-testid=status]').textContent === 'ready'")
            assert len(asked) == 1 and "API key" in asked[0]
            assert sent.count(f"Bearer {key}") >= 2  # the upload and the prompt carried the key
        finally:
            browser.close()


def test_refused_uploads_are_answered_over_a_real_socket(tmp_path):
    """Refused before its end, a large body is still read, so the client gets to read the answer instead of a
    connection reset while it is sending."""
    from clipseg.predictor import Predictor
    from clipseg.serve import ServeSettings, create_app

    model_dir = save_tiny_model(tmp_path / "tiny")
    app = create_app(lambda: Predictor(clipseg.load_model(model_dir)), ServeSettings(max_upload_mb=1))
    payload = os.urandom(6 * 1024 * 1024)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        too_big = client.post("/v1/images", files={"image": ("big.png", payload[: 3 * 1024 * 1024], "image/png")})
        assert too_big.status_code == 413 and "image: upload larger than 1 MiB" in too_big.json()["error"]
        huge_body = client.post("/v1/images", files={"image": ("big.png", payload, "image/png")})
        assert huge_body.status_code == 413 and "request body larger than" in huge_body.json()["error"]
        unknown_first = client.post(
            "/v1/images",
            files=[("typo", ("x", b"x", "text/plain")), ("image", ("big.png", payload[:900_000], "image/png"))],
        )
        assert unknown_first.status_code == 422 and "unknown field" in unknown_first.json()["error"]
        assert client.get("/healthz").status_code == 200
