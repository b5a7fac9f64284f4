"""The FastAPI application: routes, authentication, readiness and the error answers (see `create_app`)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from .. import __version__
from ..messages import one_line
from ..predictor import Predictor
from . import answers
from .batching import Batcher, Outcome, QueueFull, Work
from .cache import FeatureCache
from .errors import ApiError
from .forms import Form, choice, prompts, read_form, unit_number
from .observability import Metrics, RequestLog
from .openapi import IMAGES_BODY, LABELS_BODY, SEGMENT_BODY, error_responses
from .settings import MIB, ServeSettings
from .uploads import decode_upload, image_prompt

log = logging.getLogger("clipseg.serve")

STATIC = Path(__file__).parent / "static"
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
# Largest raw answer (format=float32): 64 M values, 256 MiB.
MAX_FLOAT32_VALUES = 64 * 1024 * 1024
# Mask encoding in parallel: enough to use the cores, few enough to bound the memory of full-size maps.
ENCODERS = 2
# The page: no script, style, image or connection to anywhere but this server. Scripts may eval (the page does
# not, but browser automation such as Playwright's wait_for_function evaluates strings in the page).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class _Service:
    """What the routes share: settings, metrics, the feature cache and, once the model is loaded, the batcher."""

    def __init__(self, load: Callable[[], Predictor], settings: ServeSettings, on_load_error: Callable[[str], None]):
        self.load_predictor = load
        self.settings = settings
        self.metrics = Metrics()
        self.cache = FeatureCache(settings.cache_images, int(settings.cache_mb * MIB))
        self.batcher: Batcher | None = None
        self.predictor: Predictor | None = None
        self.load_error: str | None = None
        self.on_load_error = on_load_error
        self.encoders: anyio.CapacityLimiter | None = None

    def load(self) -> None:
        try:
            predictor = self.load_predictor()
            _warm_up(predictor)
            batcher = Batcher(
                predictor,
                self.cache,
                max_batch=self.settings.max_batch,
                max_queue=self.settings.max_queue,
                window_s=self.settings.batch_window_ms / 1000,
                on_batch=self.metrics.batch_size.observe,
                on_depth=self.metrics.queue_depth.set,
            )
            batcher.start()
        except Exception as error:  # reported by /readyz and by the command, which then stops
            self.load_error = one_line(error) or type(error).__name__
            log.error("model failed to load: %s", self.load_error)
            self.on_load_error(self.load_error)
            return
        self.predictor, self.batcher = predictor, batcher

    def ready_batcher(self) -> Batcher:
        if self.batcher is None:
            reason = f"model failed to load: {self.load_error}" if self.load_error else "model is loading"
            raise ApiError(503, reason, self.retry_after)
        return self.batcher

    @property
    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)}

    async def run(self, work: Work, batcher: Batcher) -> Outcome:
        """Queue `work` (503 when the queue is full) and wait for it (503 after the request timeout)."""
        try:
            future = batcher.submit(work)
        except QueueFull:
            raise ApiError(503, "server busy: the request queue is full, retry shortly", self.retry_after) from None
        finally:
            batcher.arrived()
        waiting = asyncio.wrap_future(future)
        done, _ = await asyncio.wait({waiting}, timeout=self.settings.timeout_s)
        if not done:
            future.cancel()  # still queued: the batcher skips it
            waiting.cancel()
            raise ApiError(
                503, f"timed out after {self.settings.timeout_s:g} s waiting for the model, retry shortly",
                self.retry_after,
            )
        try:
            return waiting.result()
        except ApiError:
            raise
        except ValueError as error:  # a prompt the model cannot take (e.g. an unusable image prompt)
            raise ApiError(422, str(error)) from None

    async def encode(self, function: Callable, *args: object) -> object:
        return await anyio.to_thread.run_sync(function, *args, limiter=self.encoders)


@dataclasses.dataclass
class _PromptFields:
    """The fields /segment and /labels both read: text and negative prompts, a threshold and the answer format
    (filled by `read` while the form is parsed, used once the model has answered)."""

    texts: list[str] = dataclasses.field(default_factory=list)
    negatives: list[str] = dataclasses.field(default_factory=list)
    threshold: float = 0.0
    answer: str = ""

    def read(self, form: Form, settings: ServeSettings, threshold_field: str, formats: tuple[str, ...]) -> None:
        self.texts = prompts(form, "prompt", settings)
        self.negatives = prompts(form, "negative", settings)
        self.threshold = unit_number(form, threshold_field, settings.default_threshold)
        self.answer = choice(form, "format", formats)


def _warm_up(predictor: Predictor) -> None:
    """One backbone and one decoder pass before the server says it is ready: the first call of a fresh model
    pays for one-time set-up (oneDNN kernel selection, allocations) that no user request should wait for."""
    grey = Image.new("RGB", (predictor.image_size, predictor.image_size), (128, 128, 128))
    features = predictor.extract_features([grey])
    conditionals = predictor.encode_prompts(["an object"])
    predictor.decode(features, conditionals, torch.zeros(1, dtype=torch.long))


def create_app(
    predictor: Predictor | Callable[[], Predictor],
    settings: ServeSettings | None = None,
    *,
    source: str = "",
    on_load_error: Callable[[str], None] = lambda reason: None,
) -> FastAPI:
    """The server as an ASGI app.

    Args:
        predictor: the predictor, or a function that builds it (called in a background thread at start-up;
            `/readyz` answers 503 until it returns).
        settings: limits and switches (`ServeSettings`).
        source: the model's source, reported by `GET /v1/model`.
        on_load_error: called with a one-line reason if building the predictor fails (the command stops).
    """
    settings = settings or ServeSettings()
    load = predictor if callable(predictor) and not isinstance(predictor, Predictor) else (lambda: predictor)
    service = _Service(load, settings, on_load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.encoders = anyio.CapacityLimiter(ENCODERS)
        threading.Thread(target=service.load, name="clipseg-model-loader", daemon=True).start()
        yield
        if service.batcher is not None:
            service.batcher.stop()

    app = FastAPI(
        title="clipseg",
        version=__version__,
        summary="CLIPSeg: segment images from text or image prompts.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = service
    _install_error_handlers(app)
    if settings.cors_origin:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[settings.cors_origin],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Image-Id", "X-Image-Width", "X-Image-Height", "X-Request-ID"],
        )
    app.add_middleware(RequestLog, metrics=service.metrics)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="Liveness: 200 while the process lives")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once the model is loaded, 503 before", responses=error_responses(503))
    def readyz() -> dict:
        service.ready_batcher()
        return {"status": "ready"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        service.metrics.queue_depth.set(service.batcher.depth if service.batcher else 0)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(_v1_router(service, source))
    return app


def _v1_router(service: _Service, source: str) -> APIRouter:
    settings = service.settings

    def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"}
            )

    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    async def handle(request: Request, fields: frozenset[str], prepare: Callable) -> tuple[Work, Outcome]:
        """Parse the form, let `prepare` validate it into a `Work`, run it through the batcher. The batcher knows
        a request is on its way from the first byte, so that it can wait for it to batch it with others."""
        batcher = service.ready_batcher()
        batcher.expect()
        try:
            form = await read_form(request.headers, request.stream(), settings, fields)
            work = await prepare(form)
        except BaseException:
            batcher.arrived()
            raise
        request.state.log["prompts"] = len(work.prompts)
        outcome = await service.run(work, batcher)
        request.state.log["batch_size"] = outcome.batch_size
        return work, outcome

    async def image_source(form: Form, request: Request) -> tuple[str, Image.Image | None]:
        """(image_id, RGB image or None) from the `image` file or the `image_id` field."""
        data, image_id = form.file("image"), form.text("image_id")
        if data is not None and image_id is not None:
            raise ApiError(422, "give either an 'image' file or an 'image_id', not both")
        if data is None and image_id is None:
            raise ApiError(422, "no image: send an 'image' file or the 'image_id' from POST /v1/images")
        if image_id is not None:
            image_id = image_id.strip().lower()
            if not IMAGE_ID.match(image_id):
                raise ApiError(422, "image_id must be the 64 hex digits POST /v1/images returned")
            cached = service.cache.get(image_id)
            if cached is None:
                raise ApiError(404, f"image_id {image_id} is unknown or was evicted: upload the image again")
            request.state.log["image_size"] = f"{cached.size[1]}x{cached.size[0]}"
            return image_id, None
        image = await anyio.to_thread.run_sync(decode_upload, data, "image", settings.max_pixels)
        request.state.log["image_size"] = f"{image.width}x{image.height}"
        return hashlib.sha256(data).hexdigest(), image

    @router.get("/model", summary="The model: source, version and configuration", responses=error_responses(401, 503))
    def model() -> dict:
        service.ready_batcher()
        config = service.predictor.model.config
        return {"source": source, "version": __version__, "config": dataclasses.asdict(config)}

    @router.post(
        "/images",
        summary="Upload an image: the backbone runs once and its features are cached under image_id",
        openapi_extra=IMAGES_BODY,
        responses=error_responses(401, 413, 415, 422, 503),
    )
    async def images(request: Request) -> dict:
        async def prepare(form: Form) -> Work:
            if form.file("image") is None:
                raise ApiError(422, "no image: send the picture as the multipart file field 'image'")
            return Work(*await image_source(form, request))

        work, outcome = await handle(request, frozenset({"image"}), prepare)
        return {"image_id": work.image_id, "width": outcome.size[1], "height": outcome.size[0]}

    @router.post(
        "/segment",
        summary="Segment an image for text prompts and/or an image prompt",
        openapi_extra=SEGMENT_BODY,
        responses=error_responses(401, 404, 413, 415, 422, 503),
    )
    async def segment(request: Request) -> Response:
        asked = _PromptFields()

        async def prepare(form: Form) -> Work:
            asked.read(form, settings, "threshold", answers.SEGMENT_FORMATS)
            texts, answer = asked.texts, asked.answer
            support = await anyio.to_thread.run_sync(
                image_prompt, form.files.get("support", []), form.files.get("support_mask", []), settings.max_pixels
            )
            given = len(form.texts.get("prompt", [])) + (support is not None)
            if not given:
                raise ApiError(422, "no prompt: give at least one 'prompt' (text) or a 'support' + 'support_mask' pair")
            if given > settings.max_prompts:
                raise ApiError(422, f"{given} prompts: at most {settings.max_prompts} per request")
            if answer in ("png", "soft") and given != 1:
                raise ApiError(422, f"format={answer} answers exactly one prompt, got {given} (use format=json)")
            image_id, image = await image_source(form, request)
            extra = [support] if support is not None else []
            names = (*texts, *(prompt.name for prompt in extra))
            return Work(image_id, image, [*texts, *extra], names, asked.negatives)

        fields = frozenset(
            {"image", "image_id", "prompt", "negative", "threshold", "format", "support", "support_mask"}
        )
        work, outcome = await handle(request, fields, prepare)
        height, width = outcome.size
        headers = {"X-Image-Id": work.image_id, "X-Image-Width": str(width), "X-Image-Height": str(height)}
        prediction, threshold = outcome.prediction, asked.threshold
        if asked.answer == "json":
            body = await service.encode(answers.segment_json, work.image_id, outcome.size, prediction, threshold)
            return JSONResponse(body, headers=headers)
        if asked.answer == "float32":
            values = len(work.prompts) * width * height
            if values > MAX_FLOAT32_VALUES:
                raise ApiError(
                    422, f"format=float32 for {len(work.prompts)} prompts on a {width}x{height} image would be "
                    f"{values * 4 / MIB:.0f} MiB; ask for fewer prompts per request",
                )
            body = await service.encode(answers.probabilities_float32, prediction)
            return Response(body, media_type="application/octet-stream", headers=headers)
        if asked.answer == "png":
            body = await service.encode(answers.mask_png, prediction, threshold)
        else:
            body = await service.encode(answers.soft_png, prediction)
        return Response(body, media_type="image/png", headers=headers)

    @router.post(
        "/labels",
        summary="Label map: each pixel gets its most probable prompt, or background",
        openapi_extra=LABELS_BODY,
        responses=error_responses(401, 404, 413, 415, 422, 503),
    )
    async def labels(request: Request) -> Response:
        asked = _PromptFields()

        async def prepare(form: Form) -> Work:
            asked.read(form, settings, "background_threshold", answers.LABEL_FORMATS)
            texts = asked.texts
            if not texts:
                raise ApiError(422, "no prompt: give the classes to label as 'prompt' fields, e.g. prompt=cat")
            if len(texts) > 255:
                raise ApiError(422, f"{len(texts)} prompts: a label map holds at most 255")
            if answers.BACKGROUND in texts:
                raise ApiError(422, "'background' names label 0 in the answer; call the class something else")
            image_id, image = await image_source(form, request)
            return Work(image_id, image, list(texts), tuple(texts), asked.negatives)

        fields = frozenset({"image", "image_id", "prompt", "negative", "background_threshold", "format"})
        work, outcome = await handle(request, fields, prepare)
        headers = {"X-Image-Id": work.image_id}
        if asked.answer == "json":
            body = await service.encode(
                answers.labels_json, work.image_id, outcome.size, outcome.prediction, asked.threshold
            )
            return JSONResponse(body, headers=headers)
        body = await service.encode(answers.labels_png, outcome.prediction, asked.threshold)
        return Response(body, media_type="image/png", headers=headers)

    return router


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        path = request.url.path
        message = {404: f"no such endpoint: {path}", 405: f"{request.method} is not allowed on {path}"}
        text = message.get(error.status_code, str(error.detail))
        return JSONResponse({"error": text}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)
