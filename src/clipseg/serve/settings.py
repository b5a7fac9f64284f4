"""The server's limits and switches, with the defaults `clipseg serve` uses."""

from __future__ import annotations

from dataclasses import dataclass

from ..postprocess import DEFAULT_THRESHOLD

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Everything `create_app` needs to know besides the model.

    Attributes:
        max_batch: requests merged into one model pass (backbone over their new images, decoder over all their
            prompts).
        max_queue: requests waiting for the model; one more is answered 503 with Retry-After.
        batch_window_ms: how long the batcher waits for more requests once one arrived (only while others are
            on their way in).
        timeout_s: a request still waiting for the model after this long is answered 503.
        max_upload_mb: largest uploaded file, MiB (413 above).
        max_pixels: largest image, pixels (413 above); None = Pillow's decompression-bomb limit.
        max_prompts: most prompts (and, separately, negative prompts) per request (422 above).
        max_prompt_chars: longest prompt, characters (422 above).
        cache_images, cache_mb: image features kept for `image_id` (LRU, both bounds hold).
        api_key: when set, every /v1/* call needs `Authorization: Bearer <api_key>`.
        cors_origin: the one origin allowed to call from a browser (CORS off when None).
        retry_after_s: the Retry-After of 503 answers.
    """

    max_batch: int = 8
    max_queue: int = 64
    batch_window_ms: float = 5.0
    timeout_s: float = 30.0
    max_upload_mb: float = 20.0
    max_pixels: int | None = None
    max_prompts: int = 64
    max_prompt_chars: int = 1000
    cache_images: int = 32
    cache_mb: float = 1024.0
    api_key: str | None = None
    cors_origin: str | None = None
    retry_after_s: int = 1
    default_threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_prompts", "max_prompt_chars", "cache_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_window_ms", "cache_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("timeout_s", "max_upload_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1 (or None for Pillow's limit), got {self.max_pixels}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def max_body_bytes(self) -> int:
        """A request carries at most an image and a few support pairs: 4 uploads plus 1 MiB of text fields."""
        return 4 * self.max_upload_bytes + MIB
