"""The `clipseg` command: segment, labels, info, convert (and train / eval / export-onnx when installed).

Only typer and the standard library are imported here; every command imports torch and friends when it runs, so
`clipseg --help` is fast.
"""

from __future__ import annotations

import signal
import sys
from importlib import import_module

import typer

from .labels import labels
from .models import convert, info
from .segment import segment
from .video import video

app = typer.Typer(
    name="clipseg",
    help="Segment images from text or image prompts with CLIPSeg (Lüddecke & Ecker, CVPR 2022).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(segment)
app.command()(labels)
app.command()(video)
app.command()(info)
app.command()(convert)

# Commands other parts of the package provide: (module, function, command name). Registered when importable.
_OPTIONAL_COMMANDS = (
    ("clipseg.training.cli", "train", "train"),
    ("clipseg.evaluation.cli", "eval_", "eval"),
    ("clipseg.export.cli", "export_onnx", "export-onnx"),
    ("clipseg.serve.cli", "serve", "serve"),
)


def _register_optional_commands() -> None:
    for module_name, function_name, command_name in _OPTIONAL_COMMANDS:
        try:
            function = getattr(import_module(module_name), function_name)
        except (ImportError, AttributeError):
            continue  # that part of the package is not installed (or not written yet)
        app.command(command_name)(function)


_register_optional_commands()


def main() -> None:
    """Entry point of the `clipseg` script."""
    # A plain `kill` ends the run like Ctrl-C does: temporary files are removed, finished outputs kept.
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(app())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


__all__ = ["app", "main"]
