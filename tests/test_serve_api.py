"""The HTTP API in-process (FastAPI's TestClient): every endpoint, every refused input, answers byte-identical to
the CLI's files, the API key, CORS, the bounded queue and the batching across clients."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predictor_fixtures import photo, save_jpeg, save_tiny_model
from pycocotools import mask as coco_mask
from serve_fixtures import cli_files, decoded, encoded, wait_until

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import clipseg  # noqa: E402
from clipseg.cli.common import load_engine_or_fail  # noqa: E402
from clipseg.predictor import Predictor  # noqa: E402
from clipseg.serve import ServeSettings, create_app  # noqa: E402
from clipseg.serve.cli import is_loopback  # noqa: E402

KEY = "s3cret-key"


class SlowPredictor(Predictor):
    """A predictor whose decoder takes `delay` seconds longer (to fill the queue); `fail_next` makes the next
    decoder call raise, as a bug would."""

    delay = 0.0
    fail_next = False
    finished = 0

    def decode(self, *args, **kwargs):
        time.sleep(self.delay)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated failure inside the model")
        try:
            return super().decode(*args, **kwargs)
        finally:
            self.finished += 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    cat = root / "chelsea.png"
    Image.fromarray(photo("chelsea")).save(cat)
    sideways = save_jpeg(photo("coffee"), root / "coffee.jpg", orientation=6)  # 600x400 stored, shown 400x600
    mask = np.zeros((300, 451), dtype=np.uint8)
    mask[60:240, 100:330] = 255
    Image.fromarray(mask).save(root / "cat_mask.png")
    return {"cat": cat, "coffee": sideways, "cat_mask": root / "cat_mask.png"}


def start(model_dir: Path, predictor_class: type[Predictor] = Predictor, **settings) -> TestClient:
    """A TestClient on an app that loads the model as `clipseg serve` does, once it is ready."""

    def load() -> Predictor:
        return predictor_class(load_engine_or_fail(str(model_dir), device="cpu"))

    client = TestClient(create_app(load, ServeSettings(**settings), source=str(model_dir)))
    client.__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200, what="the model")
    return client


@pytest.fixture(scope="module")
def client(model_dir):
    client = start(model_dir)
    yield client
    client.__exit__(None, None, None)


def file(path: Path, name: str = "image") -> dict:
    return {name: (path.name, path.read_bytes(), "application/octet-stream")}


def upload(client: TestClient, path: Path) -> str:
    response = client.post("/v1/images", files=file(path))
    assert response.status_code == 200, response.text
    return response.json()["image_id"]


def test_health_readiness_and_model_description(client, model_dir):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    model = client.get("/v1/model").json()
    assert model["source"] == str(model_dir) and model["version"] == clipseg.__version__
    # The tiny configuration the fixture saved (predictor_fixtures.tiny_config).
    assert model["config"]["vision"]["width"] == 64 and model["config"]["decoder"]["reduce_dim"] == 16
    assert model["config"]["image_size"] == 352


def test_not_ready_until_the_model_is_loaded(model_dir):
    release = threading.Event()

    def load() -> Predictor:
        release.wait(30)
        return Predictor(clipseg.load_model(model_dir))

    with TestClient(create_app(load, ServeSettings())) as client:
        assert client.get("/healthz").status_code == 200
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json() == {"error": "model is loading"}
        busy = client.post("/v1/segment", data={"image_id": "0" * 64, "prompt": "a cat"})
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        release.set()
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the model")


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    reasons = []

    def load() -> Predictor:
        return Predictor(clipseg.load_model(tmp_path / "missing"))

    with TestClient(create_app(load, ServeSettings(), on_load_error=reasons.append)) as client:
        wait_until(lambda: bool(reasons), what="the load error")
        answer = client.get("/readyz")
        assert answer.status_code == 503 and "missing" in answer.json()["error"]
    assert "no such file or directory" in reasons[0]


def test_upload_returns_the_sha256_and_the_displayed_size(client, images):
    data = images["coffee"].read_bytes()
    answer = client.post("/v1/images", files={"image": ("c.jpg", data, "image/jpeg")}).json()
    assert answer == {"image_id": hashlib.sha256(data).hexdigest(), "width": 400, "height": 600}  # EXIF applied
    again = client.post("/v1/images", files={"image": ("c.jpg", data, "image/jpeg")}).json()
    assert again == answer


def test_segment_json_matches_the_predictor(client, images, model_dir):
    image_id = upload(client, images["cat"])
    answer = client.post(
        "/v1/segment", data={"image_id": image_id, "prompt": ["a cat", "a sofa"], "threshold": "0.45"}
    ).json()
    assert (answer["image_id"], answer["width"], answer["height"]) == (image_id, 451, 300)
    predictor = Predictor(load_engine_or_fail(str(model_dir), device="cpu"))
    predictor.set_image(images["cat"])
    reference = predictor.predict(["a cat", "a sofa"])
    assert [entry["prompt"] for entry in answer["prompts"]] == ["a cat", "a sofa"]
    for index, entry in enumerate(answer["prompts"]):
        assert isinstance(entry["rle"]["counts"], str) and entry["rle"]["size"] == [300, 451]
        mask = coco_mask.decode({"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}).astype(bool)
        probabilities = reference.probability(index).numpy()
        expected = probabilities > np.float32(0.45)
        np.testing.assert_array_equal(mask, expected)
        assert 0 < entry["area"] == expected.sum()
        assert entry["mean_probability"] == pytest.approx(probabilities[expected].mean(), abs=1e-6)


def test_png_soft_and_labels_are_byte_identical_to_the_cli(client, images, model_dir, tmp_path):
    cat = images["cat"]
    image_id = upload(client, cat)
    cli = cli_files("segment", cat, tmp_path / "s", model_dir, "-p", "a cat", "-n", "a sofa", "-t", "0.55",
                    "-f", "mask", "-f", "soft")
    fields = {"prompt": "a cat", "negative": "a sofa", "threshold": "0.55"}
    by_id = client.post("/v1/segment", data={**fields, "image_id": image_id, "format": "png"})
    assert by_id.headers["content-type"] == "image/png"
    assert by_id.content == cli["chelsea__a_cat.png"]
    by_file = client.post("/v1/segment", data={**fields, "format": "png"}, files=file(cat))
    assert by_file.content == cli["chelsea__a_cat.png"]
    soft = client.post("/v1/segment", data={**fields, "image_id": image_id, "format": "soft"})
    assert soft.content == cli["chelsea__a_cat.soft.png"]

    labels = cli_files("labels", cat, tmp_path / "l", model_dir, "-p", "cat", "-p", "sofa", "-p", "wall", "-t", "0.3")
    answer = client.post(
        "/v1/labels", data={"image_id": image_id, "prompt": ["cat", "sofa", "wall"], "background_threshold": "0.3"}
    )
    assert answer.headers["content-type"] == "image/png" and answer.content == labels["chelsea.labels.png"]
    as_json = client.post(
        "/v1/labels",
        data={"image_id": image_id, "prompt": ["cat", "sofa", "wall"], "background_threshold": "0.3", "format": "json"},
    ).json()
    assert as_json["labels"] == ["background", "cat", "sofa", "wall"]
    label_map = decoded(labels["chelsea.labels.png"])
    for value, name in enumerate(as_json["labels"]):
        rle = as_json["rle"][name]
        mask = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        np.testing.assert_array_equal(mask, label_map == value)


def test_image_prompt_matches_the_cli_and_counts_as_one_prompt(client, images, model_dir, tmp_path):
    cli = cli_files("segment", images["coffee"], tmp_path / "v", model_dir,
                    "--support", images["cat"], "--support-mask", images["cat_mask"])
    files = [
        ("image", ("coffee.jpg", images["coffee"].read_bytes(), "image/jpeg")),
        ("support", ("cat.png", images["cat"].read_bytes(), "image/png")),
        ("support_mask", ("mask.png", images["cat_mask"].read_bytes(), "image/png")),
    ]
    answer = client.post("/v1/segment", data={"format": "png"}, files=files)
    assert answer.status_code == 200, answer.text
    assert answer.content == cli["coffee__support.png"]
    both = client.post("/v1/segment", data={"prompt": "a cup"}, files=files).json()
    assert [entry["prompt"] for entry in both["prompts"]] == ["a cup", "support"]
    wrong = [*files[:2], ("support_mask", ("m.png", encoded(np.full((10, 10), 255, np.uint8)), "image/png"))]
    refused = client.post("/v1/segment", files=wrong)
    assert refused.status_code == 422 and "size" in refused.json()["error"]
    unpaired = client.post("/v1/segment", files=files[:2])
    assert unpaired.status_code == 422 and "one mask per support image" in unpaired.json()["error"]


def test_float32_probabilities_threshold_exactly_like_the_png(client, images):
    image_id = upload(client, images["cat"])
    raw = client.post("/v1/segment", data={"image_id": image_id, "prompt": "a cat", "format": "float32"})
    assert raw.headers["content-type"] == "application/octet-stream"
    probabilities = np.frombuffer(raw.content, dtype="<f4").reshape(300, 451)
    # A threshold equal to a value in the map: that pixel lies exactly on the boundary and stays out of the mask
    # (p > t, the rule of the original CLIPSeg's metrics.py).
    for value in (float(np.median(probabilities)), float(probabilities.max()), 0.7, 0.0, 1.0):
        text = repr(value)
        png = client.post(
            "/v1/segment", data={"image_id": image_id, "prompt": "a cat", "format": "png", "threshold": text}
        )
        np.testing.assert_array_equal(decoded(png.content) > 0, probabilities > np.float32(float(text)))


BAD_SEGMENT = [
    ({}, 422, "no image"),
    ({"prompt": ""}, 422, "empty"),
    ({"prompt": "   "}, 422, "empty"),
    ({"prompt": ["a", "b"], "format": "png"}, 422, "exactly one prompt"),
    ({"prompt": ["a", "b"], "format": "soft"}, 422, "exactly one prompt"),
    ({"prompt": "a", "format": "bmp"}, 422, "unknown format"),
    ({"prompt": "a", "threshold": "abc"}, 422, "threshold"),
    ({"prompt": "a", "threshold": "1.5"}, 422, "threshold"),
    ({"prompt": "a", "threshold": "-0.1"}, 422, "threshold"),
    ({"prompt": "a", "threshold": "nan"}, 422, "threshold"),
    ({"prompt": "a", "threshold": ["0.1", "0.2"]}, 422, "once"),
    ({"prompt": "x" * 1001}, 422, "longer than 1000"),
    ({"prompt": [f"p{i}" for i in range(65)]}, 422, "at most 64"),
    ({"prompt": "a", "negative": " "}, 422, "empty"),
    ({"prompt": "a", "promt": "typo"}, 422, "unknown field"),
]


@pytest.mark.parametrize(("fields", "status", "words"), BAD_SEGMENT)
def test_bad_segment_requests(client, images, fields, status, words):
    image_id = upload(client, images["cat"])
    data = {"image_id": image_id, **fields} if fields else {"prompt": "a cat"}  # {}: no image at all
    answer = client.post("/v1/segment", data=data)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error and "\n" not in error
    assert list(answer.json()) == ["error"]


def test_bad_images_and_ids(client, images):
    cat = images["cat"].read_bytes()
    cases = [
        ({"image": ("a.png", b"definitely not an image", "image/png")}, {"prompt": "a"}, 415),
        ({"image": ("a.png", b"", "image/png")}, {"prompt": "a"}, 415),
        ({"image": ("a.png", cat[: len(cat) // 2], "image/png")}, {"prompt": "a"}, 422),
        ({"image": ("a.png", cat, "image/png")}, {"prompt": "a", "image_id": "a" * 64}, 422),
        (None, {"prompt": "a", "image_id": "f" * 64}, 404),
        (None, {"prompt": "a", "image_id": "not-an-id"}, 422),
    ]
    for files, data, status in cases:
        answer = client.post("/v1/segment", data=data, files=files)
        assert answer.status_code == status, (data, answer.text)
        assert answer.json()["error"]
    assert client.post("/v1/images", files={"image": ("a.txt", b"hello", "text/plain")}).status_code == 415
    assert client.post("/v1/images", data={"prompt": "a"}).status_code == 422  # no file, unknown field
    assert client.post("/v1/images", files={"other": ("a.png", cat, "image/png")}).status_code == 422
    as_json = client.post("/v1/segment", json={"prompt": "a cat"})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["error"]
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/segment").status_code == 405


def test_bad_label_requests(client, images):
    image_id = upload(client, images["cat"])
    for data, words in [
        ({}, "no prompt"),
        ({"prompt": "cat", "format": "soft"}, "unknown format"),
        ({"prompt": "cat", "background_threshold": "2"}, "background_threshold"),
        ({"prompt": "background"}, "label 0"),
    ]:
        answer = client.post("/v1/labels", data={"image_id": image_id, **data})
        assert answer.status_code == 422 and words in answer.json()["error"], answer.text


def test_size_limits(model_dir, images):
    big = encoded(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))  # ~360 KB, 120k px
    client = start(model_dir, max_upload_mb=0.25, max_pixels=100_000)
    try:
        too_big = client.post("/v1/images", files={"image": ("b.png", big, "image/png")})
        assert too_big.status_code == 413 and "0.25 MiB" in too_big.json()["error"]
        many_pixels = encoded(np.zeros((400, 400), dtype=np.uint8))  # small file, 160k pixels
        answer = client.post("/v1/segment", data={"prompt": "a"}, files={"image": ("p.png", many_pixels, "image/png")})
        assert answer.status_code == 413 and "100,000 pixels" in answer.json()["error"]
    finally:
        client.__exit__(None, None, None)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit grey pixels, with no pixel data (per the PNG spec:
    signature, IHDR, IEND, each chunk with its CRC-32)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header(client):
    # 900 M pixels, 10x Pillow's limit, in 57 bytes: refused before anything is decoded.
    bomb = png_header_only(30000, 30000)
    answer = client.post("/v1/images", files={"image": ("bomb.png", bomb, "image/png")})
    assert answer.status_code == 413 and "pixels" in answer.json()["error"]
    # Within Pillow's limit the same header is an image whose data are missing.
    empty = client.post("/v1/images", files={"image": ("t.png", png_header_only(20, 20), "image/png")})
    assert empty.status_code == 422


def test_uploads_never_touch_the_disk(client, images, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a temporary file was created for an upload")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    large = encoded(np.random.default_rng(1).integers(0, 256, (700, 900, 3), dtype=np.uint8))  # ~1.9 MB
    assert len(large) > 1024 * 1024
    answer = client.post("/v1/segment", data={"prompt": "noise"}, files={"image": ("n.png", large, "image/png")})
    assert answer.status_code == 200, answer.text


def test_api_key(model_dir, images):
    client = start(model_dir, api_key=KEY)
    try:
        assert client.get("/healthz").status_code == 200
        missing = client.get("/v1/model")
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
        assert "API key" in missing.json()["error"]
        assert client.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/model", headers={"Authorization": KEY}).status_code == 401
        good = {"Authorization": f"Bearer {KEY}"}
        assert client.get("/v1/model", headers=good).status_code == 200
        refused = client.post("/v1/images", files=file(images["cat"]))
        assert refused.status_code == 401
        assert client.post("/v1/images", files=file(images["cat"]), headers=good).status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_cors_is_off_by_default_and_allows_one_origin(client, model_dir):
    preflight = {"Origin": "https://labels.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "https://x.example"}).headers
    assert "access-control-allow-origin" not in client.options("/v1/segment", headers=preflight).headers
    allowed = start(model_dir, cors_origin="https://labels.example")
    try:
        asking = {**preflight, "Access-Control-Request-Headers": "authorization"}
        answer = allowed.options("/v1/segment", headers=asking)
        assert answer.headers["access-control-allow-origin"] == "https://labels.example"
        other = allowed.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        allowed.__exit__(None, None, None)


def test_full_queue_answers_503_with_retry_after_and_recovers(model_dir, images):
    client = start(model_dir, SlowPredictor, max_queue=1, max_batch=1, batch_window_ms=0)
    try:
        image_id = upload(client, images["cat"])
        client.app.state.service.predictor.delay = 0.4
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(lambda i: client.post("/v1/segment", data={"image_id": image_id, "prompt": f"p{i}"}), range(6))
            )
        statuses = sorted(answer.status_code for answer in answers)
        assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
        busy = next(answer for answer in answers if answer.status_code == 503)
        assert busy.headers["Retry-After"] == "1" and "queue is full" in busy.json()["error"]
        client.app.state.service.predictor.delay = 0.0
        assert client.post("/v1/segment", data={"image_id": image_id, "prompt": "again"}).status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_request_timeout_answers_503(model_dir, images):
    client = start(model_dir, SlowPredictor, timeout_s=1.0)
    try:
        image_id = upload(client, images["cat"])  # the backbone only: not slowed down
        predictor = client.app.state.service.predictor
        predictor.delay, done = 3.0, predictor.finished
        answer = client.post("/v1/segment", data={"image_id": image_id, "prompt": "slow"})
        assert answer.status_code == 503 and "timed out" in answer.json()["error"] and "Retry-After" in answer.headers
        predictor.delay = 0.0
        wait_until(lambda: predictor.finished == done + 1, what="the slow call to end")
        assert client.post("/v1/segment", data={"image_id": image_id, "prompt": "fast"}).status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_a_failure_inside_the_model_is_a_500_and_the_next_request_works(model_dir, images):
    client = start(model_dir, SlowPredictor)
    try:
        image_id = upload(client, images["cat"])
        client.app.state.service.predictor.fail_next = True
        failed = client.post("/v1/segment", data={"image_id": image_id, "prompt": "a cat"})
        assert failed.status_code == 500 and "internal server error" in failed.json()["error"]
        assert client.post("/v1/segment", data={"image_id": image_id, "prompt": "a cat"}).status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_requests_of_different_clients_share_a_batch_and_get_their_own_answers(model_dir, images):
    """While the first request holds the model, the next ones queue up; they then run as one batch: the backbone
    over their different images together, the decoder over all their prompts."""
    client = start(model_dir, SlowPredictor, max_batch=8, batch_window_ms=50)
    try:
        rng = np.random.default_rng(3)
        uploads = [encoded(rng.integers(0, 256, (64 + 8 * i, 96, 3), dtype=np.uint8)) for i in range(5)]
        prompts = [["a cat"], ["a dog", "a cup"], ["a tree"], ["sky", "road", "car"], ["a cat"]]

        def ask(index: int):
            return client.post(
                "/v1/segment",
                data={"prompt": prompts[index], "threshold": "0.5"},
                files={"image": (f"{index}.png", uploads[index], "image/png")},
            )

        client.app.state.service.predictor.delay = 0.3
        with ThreadPoolExecutor(5) as pool:
            together = [answer.json() for answer in pool.map(ask, range(5))]
        client.app.state.service.predictor.delay = 0.0
        metrics = client.get("/metrics").text
        batches = _metric(metrics, "clipseg_batch_size_count")
        requests = _metric(metrics, "clipseg_batch_size_sum")
        assert requests > batches  # some batch held more than one request
        # Alone, each request gives the same masks (the reference; the features are cached now, so clear them).
        reference = start(model_dir, max_batch=1)
        try:
            for index, answer in enumerate(together):
                alone = reference.post(
                    "/v1/segment",
                    data={"prompt": prompts[index], "threshold": "0.5"},
                    files={"image": (f"{index}.png", uploads[index], "image/png")},
                ).json()
                assert answer == alone
        finally:
            reference.__exit__(None, None, None)
    finally:
        client.__exit__(None, None, None)


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_metrics_and_one_log_line_per_request(client, images, caplog):
    image_id = upload(client, images["cat"])
    with caplog.at_level(logging.INFO, logger="clipseg.serve"):
        answer = client.post("/v1/segment", data={"image_id": image_id, "prompt": ["a", "b"]})
        client.post("/v1/segment", data={"image_id": image_id})
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "clipseg.serve"]
    assert len(lines) == 2
    ok, bad = lines
    assert ok["request_id"] == answer.headers["X-Request-ID"]
    assert (ok["route"], ok["status"], ok["image_size"], ok["prompts"], ok["batch_size"]) == (
        "/v1/segment", 200, "451x300", 2, 1
    )
    assert ok["latency_ms"] > 0 and bad["status"] == 422
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'clipseg_requests_total{route="/v1/segment",status="200"}' in text
    assert 'clipseg_requests_total{route="/v1/segment",status="422"}' in text
    assert "clipseg_request_seconds_bucket" in text and "clipseg_queue_depth" in text
    assert "clipseg_batch_size_bucket" in text


def test_openapi_describes_the_multipart_fields(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "image_id", "prompt", "negative", "threshold", "format", "support", "support_mask"} <= set(
        body["properties"]
    )


def test_page_is_served_without_external_urls(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-security-policy"].startswith("default-src 'self';")
    for hook in ("image-input", "prompt-input", "negative-input", "threshold", "result", "download", "status"):
        assert f'data-testid="{hook}"' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and '"prompt-chip"' in script.text
    for text in (page.text, script.text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_loopback_detection_and_the_refusal_to_serve_openly_without_a_key(model_dir):
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.20", "example.com"]))
    from typer.testing import CliRunner

    from clipseg import cli

    result = CliRunner().invoke(cli.app, ["serve", "--model", str(model_dir), "--host", "0.0.0.0"], env={})
    assert result.exit_code == 2 and "--api-key" in result.stderr


def test_feature_cache_keeps_both_bounds():
    import torch

    from clipseg.serve.cache import CachedImage, FeatureCache

    def entry(floats: int) -> CachedImage:  # float32: 4 bytes each, in two layers
        return CachedImage([torch.zeros(1, floats // 2), torch.zeros(1, floats // 2)], (1, 1))

    cache = FeatureCache(max_images=3, max_bytes=4000)
    for name in "abc":
        cache.put(name, entry(250))  # 1000 bytes each
    assert len(cache) == 3 and cache.nbytes == 3000
    cache.get("a")  # a is now the most recently used
    cache.put("d", entry(250))  # the 4th image: the least recently used (b) goes
    assert [n for n in "abcd" if n in cache] == ["a", "c", "d"]
    cache.put("e", entry(500))  # 2000 bytes: 5000 > 4000, so the least recently used (c) goes: 4000
    assert [n for n in "acde" if n in cache] == ["a", "d", "e"] and cache.nbytes == 4000
    cache.put("huge", entry(1250))  # 5000 bytes alone exceed the bound: not kept, nothing else lost
    assert "huge" not in cache and cache.nbytes == 4000 and len(cache) == 3
