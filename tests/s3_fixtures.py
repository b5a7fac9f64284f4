"""A local S3 server (moto's, from the test extra) started and stopped by the tests, for `-o s3://...`.

The URIs carry their (dummy) credentials, endpoint and region, so every process that opens them, Ray's workers
included, reaches this server without any environment.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

BUCKET = "clipseg-test"
ACCESS = "testing:testing"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """host:port of a moto S3 server holding an empty bucket BUCKET."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]'): "
                        "no local S3 server to test s3:// outputs against")
    fs = pytest.importorskip("pyarrow.fs", reason="pyarrow is not installed (pip install 'clipseg[ray]')")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        filesystem, _ = fs.FileSystem.from_uri(s3_uri(endpoint, "") + "&allow_bucket_creation=true")
        filesystem.create_dir(BUCKET)
        yield endpoint
    finally:
        server.kill()
        server.wait()


def s3_uri(endpoint: str, key: str) -> str:
    """The URI of `key` in BUCKET on the server at `endpoint`."""
    return f"s3://{ACCESS}@{BUCKET}/{key}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


def s3_files(endpoint: str, prefix: str) -> dict[str, bytes]:
    """Every visible object below `prefix` (path relative to it -> bytes), hidden names excluded, as
    `batch_fixtures.output_files` lists a folder."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(s3_uri(endpoint, prefix))
    found = {}
    for info in filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True)):
        relative = info.path[len(root) + 1 :]
        if info.type == fs.FileType.File and not any(part.startswith(".") for part in relative.split("/")):
            with filesystem.open_input_stream(info.path) as stream:
                found[relative] = stream.read()
    return dict(sorted(found.items()))
