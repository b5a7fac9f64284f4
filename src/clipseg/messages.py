"""Text shown to people: long prompts and names shortened for messages, legends and progress lines."""

from __future__ import annotations


def shorten(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and "…" when it is longer than `limit`."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
