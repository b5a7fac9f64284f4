"""The one exception handlers turn into an HTTP answer: `{"error": "<one line>"}` with a status."""

from __future__ import annotations


class ApiError(Exception):
    """A request the server answers with `status` and a one-line `message` (and extra `headers`)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.headers = headers or {}
