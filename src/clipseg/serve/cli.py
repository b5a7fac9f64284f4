"""`clipseg serve`: the HTTP API and the page, on loopback unless told otherwise (then with an API key)."""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Annotated

import typer

from ..cli.common import DEFAULT_MODEL, EXIT_USAGE, CLIError, run_command
from ..cli.options import (
    Backend,
    BackendOption,
    ClipOption,
    DebugOption,
    DeviceOption,
    LayersOption,
    ModelOption,
    Precision,
    PrecisionOption,
)

LIMITS = "Limits"
SECURITY = "Security"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    model: ModelOption = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Address to listen on; other than loopback needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="CLIPSEG_API_KEY",
            help="Require 'Authorization: Bearer KEY' on /v1/* (also read from $CLIPSEG_API_KEY).",
            rich_help_panel=SECURITY,
            show_default=False,
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth", help="Serve a non-loopback --host without an API key.", rich_help_panel=SECURITY
        ),
    ] = False,
    cors_origin: Annotated[
        str | None,
        typer.Option(help="Allow browser calls from this origin (CORS is off by default).", rich_help_panel=SECURITY),
    ] = None,
    precision: PrecisionOption = Precision.fp32,
    backend: BackendOption = Backend.torch,
    device: DeviceOption = "auto",
    clip: ClipOption = None,
    extract_layers: LayersOption = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests per model pass.", rich_help_panel=LIMITS)] = 8,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Requests waiting for the model; more get 503.", rich_help_panel=LIMITS)
    ] = 64,
    batch_window_ms: Annotated[
        float, typer.Option(min=0.0, help="Wait this long for requests to batch together.", rich_help_panel=LIMITS)
    ] = 5.0,
    timeout: Annotated[
        float,
        typer.Option(min=0.001, help="Seconds a request may wait for the model (then 503).", rich_help_panel=LIMITS),
    ] = 30.0,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest uploaded file, MiB (413 above).", rich_help_panel=LIMITS)
    ] = 20.0,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            min=0, help="Largest image in pixels (413 above); default Pillow's limit, 0 = none.", rich_help_panel=LIMITS
        ),
    ] = None,
    max_prompts: Annotated[int, typer.Option(min=1, help="Prompts per request.", rich_help_panel=LIMITS)] = 64,
    max_prompt_chars: Annotated[int, typer.Option(min=1, help="Characters per prompt.", rich_help_panel=LIMITS)] = 1000,
    cache_images: Annotated[
        int, typer.Option(min=1, help="Uploaded images whose features are kept.", rich_help_panel=LIMITS)
    ] = 32,
    cache_mb: Annotated[
        float, typer.Option(min=0.0, help="Memory for kept features, MiB.", rich_help_panel=LIMITS)
    ] = 1024.0,
    debug: DebugOption = False,
) -> None:
    """Serve the HTTP API (/v1/...) and the interactive page (/) with one model loaded at start.

    Example: clipseg serve --model CIDAS/clipseg-rd64-refined --port 8000, then open http://127.0.0.1:8000/
    """

    def body() -> int:
        try:
            import uvicorn

            from . import ServeSettings, create_app
        except ImportError as error:
            raise CLIError(f"clipseg serve needs the server extra: pip install 'clipseg[server]' ({error})") from None
        if not is_loopback(host) and api_key is None and not insecure_no_auth:
            raise CLIError(
                f"--host {host} is reachable from other machines: give --api-key KEY (or $CLIPSEG_API_KEY), "
                "or --insecure-no-auth to serve without one",
                EXIT_USAGE,
            )
        try:
            settings = ServeSettings(
                max_batch=max_batch, max_queue=max_queue, batch_window_ms=batch_window_ms, timeout_s=timeout,
                max_upload_mb=max_upload_mb, max_pixels=max_pixels or None, max_prompts=max_prompts,
                max_prompt_chars=max_prompt_chars, cache_images=cache_images, cache_mb=cache_mb, api_key=api_key,
                cors_origin=cors_origin,
            )
        except ValueError as error:
            raise CLIError(str(error), EXIT_USAGE) from None
        if max_pixels is not None:
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = max_pixels or None  # Pillow's own bomb check must not refuse first
        _configure_logging()
        failure: list[str] = []

        def load():
            from ..cli.common import load_engine_or_fail
            from ..predictor import Predictor

            loaded = load_engine_or_fail(
                model, backend=backend, precision=precision, device=device, clip=clip, extract_layers=extract_layers
            )
            return Predictor(loaded)

        def stop(reason: str) -> None:
            failure.append(reason)
            server.should_exit = True

        app = create_app(load, settings, source=model, on_load_error=stop)
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, log_level="debug" if debug else "info",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        try:
            server.run()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM, re-raised by uvicorn after its graceful shutdown
            pass
        if failure:
            raise CLIError(f"model failed to load: {failure[0]}")
        return 0

    status = run_command(body, debug=debug)
    if status:
        raise typer.Exit(status)


def _configure_logging() -> None:
    """The request log (one JSON line per request) and uvicorn's start/stop lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("clipseg.serve", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    # python-multipart logs each malformed body it sees; the request's own log line already says 422.
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)


__all__ = ["is_loopback", "serve"]
