"""OpenAPI descriptions of the multipart bodies (parsed by `forms`, so FastAPI cannot infer them) and of the
JSON error answers."""

from __future__ import annotations

from .answers import LABEL_FORMATS, SEGMENT_FORMATS

_FILE = {"type": "string", "format": "binary"}
_TEXTS = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 1000}}
_FILES = {"type": "array", "items": _FILE}
_UNIT = {"type": "number", "minimum": 0, "maximum": 1}
_IMAGE_ID = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "from POST /v1/images"}
_ERROR = {
    "application/json": {
        "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    }
}
_MEANINGS = {
    401: "missing or wrong API key",
    404: "image_id unknown or evicted",
    413: "upload or image too large",
    415: "not an image / not multipart",
    422: "invalid field",
    503: "model loading, queue full or timed out (see Retry-After)",
}


def _body(properties: dict, required: list[str] | None = None) -> dict:
    schema: dict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    arrays = [name for name, value in properties.items() if value.get("type") == "array"]
    encoding = {name: {"style": "form", "explode": True} for name in arrays}
    content = {"multipart/form-data": {"schema": schema, "encoding": encoding}}
    return {"requestBody": {"required": True, "content": content}}


def error_responses(*statuses: int) -> dict[int, dict]:
    return {status: {"description": _MEANINGS[status], "content": _ERROR} for status in statuses}


_IMAGE_AND_PROMPTS = {"image": _FILE, "image_id": _IMAGE_ID, "prompt": _TEXTS, "negative": _TEXTS}
IMAGES_BODY = _body({"image": _FILE}, ["image"])
SEGMENT_BODY = _body(
    {
        **_IMAGE_AND_PROMPTS,
        "threshold": {**_UNIT, "default": 0.4},
        "format": {"type": "string", "enum": list(SEGMENT_FORMATS), "default": SEGMENT_FORMATS[0]},
        "support": _FILES,
        "support_mask": _FILES,
    }
)
LABELS_BODY = _body(
    {
        **_IMAGE_AND_PROMPTS,
        "background_threshold": {**_UNIT, "default": 0.4},
        "format": {"type": "string", "enum": list(LABEL_FORMATS), "default": LABEL_FORMATS[0]},
    },
    ["prompt"],
)
