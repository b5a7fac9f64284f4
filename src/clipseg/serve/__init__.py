"""`clipseg serve`: CLIPSeg as an HTTP service with an interactive page (FastAPI + uvicorn, the `server` extra).

    from clipseg.serve import ServeSettings, create_app
    app = create_app(lambda: Predictor(clipseg.load_model(source)), ServeSettings(), source=source)

Layout: `app` (routes), `forms` (streaming multipart parsing and validation, uploads kept in memory), `batching`
(the dynamic batcher with its bounded queue), `cache` (image features, LRU with a memory bound), `answers`
(PNG / RLE / raw answers, encoded exactly as the CLI writes its files), `observability` (request log and
Prometheus metrics), `cli` (the command), `static/` (the page).
"""

from __future__ import annotations

from .app import create_app
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
