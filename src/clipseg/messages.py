"""Text shown to people: long prompts and names shortened for messages, legends and progress lines."""

from __future__ import annotations


def shorten(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and "…" when it is longer than `limit`."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(message: object) -> str:
    """Collapse a message to one line (exception texts sometimes span several)."""
    return " ".join(str(message).split())


def first_line(error: BaseException) -> str:
    """The first line of an exception's text (or its type name when it has none), for one-line error messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
