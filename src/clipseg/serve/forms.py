"""Requests in: multipart/form-data parsed as it streams in (files stay in memory, never on disk), every limit
checked on the way, then validated into the fields each endpoint reads.

Text fields are UTF-8; files are whatever bytes were sent (decoded later by `clipseg.image`).
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from ..messages import one_line
from .errors import ApiError
from .settings import MIB, ServeSettings

FILE_FIELDS = frozenset({"image", "support", "support_mask"})
# Text fields may hold a prompt of max_prompt_chars characters of up to 4 UTF-8 bytes each, plus some slack.
TEXT_FIELD_SLACK = 1024
# A refused body is read to its end up to this size, so that the client gets to read the answer.
DRAIN_LIMIT = 512 * 1024 * 1024


@dataclass
class Form:
    """The parsed fields: text values and file contents, each in the order sent."""

    texts: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[bytes]] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        """The single value of a text field (422 when repeated)."""
        values = self.texts.get(name, [])
        if len(values) > 1:
            raise ApiError(422, f"field '{name}' given {len(values)} times; give it once")
        return values[0] if values else None

    def file(self, name: str) -> bytes | None:
        values = self.files.get(name, [])
        if len(values) > 1:
            raise ApiError(422, f"field '{name}' given {len(values)} times; give one file")
        return values[0] if values else None


async def read_form(
    headers: dict[str, str], stream: AsyncIterator[bytes], settings: ServeSettings, allowed: Iterable[str]
) -> Form:
    """Parse a multipart body from `stream`, refusing on the way: a body or file above its size limit (413), a
    field not in `allowed`, too many fields, malformed multipart (422), another content type (415)."""
    allowed = frozenset(allowed)
    content_type, options = parse_options_header(headers.get("content-type", ""))
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
        if int(declared) <= DRAIN_LIMIT:
            await _drain(stream)
        raise _too_large_body(settings)
    try:
        return await _parse(content_type, options, stream, settings, allowed)
    except ApiError:
        await _drain(stream)
        raise


async def _drain(stream: AsyncIterator[bytes]) -> None:
    """Read (and drop) the rest of a body refused before its end, up to `DRAIN_LIMIT` bytes: a client still
    sending when the connection closes would see a reset instead of the answer."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > DRAIN_LIMIT:
            return


async def _parse(
    content_type: bytes, options: dict, stream: AsyncIterator[bytes], settings: ServeSettings, allowed: frozenset
) -> Form:
    if content_type == b"application/x-www-form-urlencoded":
        return _url_encoded(await _read_all(stream, MIB), settings, allowed)
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, "send the request as multipart/form-data (fields: " + ", ".join(sorted(allowed)) + ")")
    collector = _Collector(settings, allowed)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > settings.max_body_bytes:
                raise _too_large_body(settings)
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        raise
    except Exception as error:  # python-multipart raises several types for malformed bodies
        reason = one_line(error) or "parse error"
        raise ApiError(422, f"malformed multipart/form-data body ({reason})") from None
    if not collector.finished:
        raise ApiError(422, "malformed multipart/form-data body (it ends before its closing boundary)")
    return collector.form


async def _read_all(stream: AsyncIterator[bytes], limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"url-encoded body larger than {limit // MIB} MiB (send files as multipart/form-data)")
        chunks.append(chunk)
    return b"".join(chunks)


def _url_encoded(body: bytes, settings: ServeSettings, allowed: frozenset[str]) -> Form:
    """Text-only requests (an image_id and prompts) may come url-encoded, as plain HTML forms and curl -d send
    them; files need multipart."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=2 * settings.max_prompts + 32)
    except UnicodeDecodeError:
        raise ApiError(422, "url-encoded body is not UTF-8 text") from None
    except ValueError as error:
        raise ApiError(422, f"malformed url-encoded body ({error})") from None
    form = Form()
    for name, value in pairs:
        if name not in allowed:
            raise ApiError(422, f"unknown field '{name}' (this endpoint reads: {', '.join(sorted(allowed))})")
        if name in FILE_FIELDS:
            raise ApiError(422, f"'{name}' must be a file: send the request as multipart/form-data")
        form.texts.setdefault(name, []).append(value)
    return form


def _too_large_body(settings: ServeSettings) -> ApiError:
    return ApiError(413, f"request body larger than {settings.max_body_bytes / (1024 * 1024):g} MiB")


class _Collector:
    """python-multipart callbacks that gather parts into a `Form`, enforcing the limits as bytes arrive."""

    def __init__(self, settings: ServeSettings, allowed: frozenset[str]) -> None:
        self.settings = settings
        self.allowed = allowed
        self.form = Form()
        self.finished = False
        self.max_parts = 2 * settings.max_prompts + 32
        self.max_text_bytes = 4 * settings.max_prompt_chars + TEXT_FIELD_SLACK
        self._parts = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._chunks: list[bytes] = []
        self._size = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._add_header_name(data[start:end]),
            "on_header_value": lambda data, start, end: self._add_header_value(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finish,
        }

    def _begin(self) -> None:
        self._parts += 1
        if self._parts > self.max_parts:
            raise ApiError(422, f"too many form fields (more than {self.max_parts})")
        self._disposition = b""
        self._header_name = self._header_value = b""
        self._chunks, self._size = [], 0

    def _add_header_name(self, data: bytes) -> None:
        self._header_name += data

    def _add_header_value(self, data: bytes) -> None:
        self._header_value += data

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise ApiError(422, "a multipart part has no name (Content-Disposition: form-data; name=...)")
        self._name = name.decode("utf-8", errors="replace")
        if self._name not in self.allowed:
            raise ApiError(
                422, f"unknown field '{self._name}' (this endpoint reads: {', '.join(sorted(self.allowed))})"
            )

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._name in FILE_FIELDS:
            if self._size > self.settings.max_upload_bytes:
                raise ApiError(413, f"{self._name}: upload larger than {self.settings.max_upload_mb:g} MiB")
        elif self._size > self.max_text_bytes:
            limit = self.settings.max_prompt_chars
            raise ApiError(422, f"field '{self._name}' is too long (a prompt holds at most {limit} characters)")
        self._chunks.append(data[start:end])

    def _end(self) -> None:
        value = b"".join(self._chunks)
        if self._name in FILE_FIELDS:
            self.form.files.setdefault(self._name, []).append(value)
        else:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, f"field '{self._name}' is not UTF-8 text") from None
            self.form.texts.setdefault(self._name, []).append(text)

    def _finish(self) -> None:
        self.finished = True


def prompts(form: Form, name: str, settings: ServeSettings) -> list[str]:
    """The values of a repeatable prompt field, checked (non-blank, not too long, not too many) and with
    repeats removed as the CLI removes them."""
    values = form.texts.get(name, [])
    if len(values) > settings.max_prompts:
        raise ApiError(422, f"{len(values)} '{name}' fields: at most {settings.max_prompts} per request")
    for value in values:
        if not value.strip():
            raise ApiError(422, f"empty '{name}': give text to segment, e.g. {name}=a cup")
        if len(value) > settings.max_prompt_chars:
            raise ApiError(
                422, f"a '{name}' of {len(value)} characters is longer than {settings.max_prompt_chars}"
            )
    return list(dict.fromkeys(values))


def unit_number(form: Form, name: str, default: float) -> float:
    """A number in [0, 1] (threshold, background_threshold); `default` when absent."""
    text = form.text(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ApiError(422, f"{name} must be a number in [0, 1], got {text[:40]!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ApiError(422, f"{name} must be a number in [0, 1], got {text[:40]!r}")
    return value


def choice(form: Form, name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first when the field is absent)."""
    value = form.text(name)
    if value is None:
        return choices[0]
    if value not in choices:
        raise ApiError(422, f"unknown {name} {value[:40]!r}; choose one of {', '.join(choices)}")
    return value
