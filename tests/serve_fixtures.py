"""Helpers of the server tests: encoded test images, a running app, the CLI's files for the same inputs."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from clipseg import cli

runner = CliRunner()


def encoded(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_files(command: str, image: Path, out: Path, model_dir: Path, *args: str | Path) -> dict[str, bytes]:
    """Run `clipseg COMMAND IMAGE ... -o OUT --model MODEL` and return the files it wrote by name."""
    result = runner.invoke(
        cli.app, [command, str(image), *map(str, args), "-o", str(out), "--model", str(model_dir), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}


class ServerThread:
    """An ASGI app served by uvicorn on a free loopback port in a thread, for the duration of a `with` block."""

    def __init__(self, app) -> None:  # noqa: ANN001 (any ASGI app)
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        import httpx

        self.thread.start()

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, what="the server thread")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
