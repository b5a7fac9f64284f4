"""`clipseg serve`: CLIPSeg as an HTTP service with an interactive page (FastAPI + uvicorn, the `server` extra).

    from clipseg.serve import ServeSettings, create_app
    app = create_app(lambda: Predictor(clipseg.load_model(source)), ServeSettings(), source=source)

Layout: `app` (routes), `forms` (streaming multipart parsing and validation, uploads kept in memory), `batching`
(the dynamic batcher with its bounded queue), `cache` (image features, LRU with a memory bound), `answers`
(PNG / RLE / raw answers, encoded exactly as the CLI writes its files), `observability` (request log and
Prometheus metrics), `cli` (the command), `static/` (the page).

Names are imported lazily, so that registering the command (`clipseg --help`) imports neither FastAPI nor torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {"create_app": "clipseg.serve.app", "ServeSettings": "clipseg.serve.settings"}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .app import create_app
    from .settings import ServeSettings


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipseg.serve' has no attribute {name!r}")
