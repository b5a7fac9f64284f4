"""Request log and Prometheus metrics: one structured (JSON) log line per request, and the counters, histograms
and gauges `GET /metrics` exports (`clipseg_requests_total`, `clipseg_request_seconds`, `clipseg_queue_depth`,
`clipseg_batch_size`). Each app has its own registry, so several apps can live in one process."""

from __future__ import annotations

import json
import logging
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("clipseg.serve")

# Routes are labelled by their template; anything else is "other", so the label set stays bounded.
KNOWN_ROUTES = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/images", "/v1/segment", "/v1/labels"}
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    """The app's Prometheus collectors, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clipseg_requests_total", "HTTP requests by route and status.", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "clipseg_request_seconds", "Request latency, seconds.", ["route"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("clipseg_queue_depth", "Requests waiting for the model.", registry=self.registry)
        self.batch_size = Histogram(
            "clipseg_batch_size", "Requests per model pass.", buckets=BATCH_BUCKETS, registry=self.registry
        )


def route_label(path: str) -> str:
    if path in KNOWN_ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


class RequestLog:
    """ASGI middleware: a request id (X-Request-ID), the metrics, and one JSON log line per HTTP request with
    what the handler recorded in `request.state.log` (image size, prompts, batch size)."""

    def __init__(self, app, metrics: Metrics) -> None:  # noqa: ANN001 (any ASGI app)
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 (ASGI signature)
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        record: dict = {}
        scope.setdefault("state", {})["log"] = record
        status: dict = {"code": 500}
        started = time.perf_counter()

        async def send_with_id(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # a bug, not the request's fault: answer 500, keep serving
            log.exception("request %s failed", request_id)
            if status.get("started"):
                raise
            status["code"] = 500
            body = json.dumps({"error": f"internal server error (request id {request_id})"}).encode()
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]})
            await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope["path"])
            self.metrics.requests.labels(route=route, status=str(status["code"])).inc()
            self.metrics.latency.labels(route=route).observe(elapsed)
            line = {
                "request_id": request_id,
                "method": scope["method"],
                "route": route,
                "path": scope["path"][:200],
                "status": status["code"],
                "latency_ms": round(elapsed * 1000, 2),
                **record,
            }
            log.info(json.dumps(line, ensure_ascii=False))
