"""Pieces the commands share: one-line error reporting, device choice, model loading.

Nothing here imports torch, numpy or PIL at module level: `clipseg --help` must stay fast.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, TypeVar

import typer

from ..messages import one_line
from .options import Backend, Precision

if TYPE_CHECKING:
    from rich.console import Console

    from ..model.clipseg import CLIPSeg
    from ..model.interface import SegmentationModel

# The same default as clipseg.checkpoints.pretrained.DEFAULT_MODEL, spelled out to keep torch out of --help.
DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

T = TypeVar("T")


class CLIError(Exception):
    """A problem the user can fix, reported as one line; `exit_code` is the process's exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURES) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def print_line(console: Console, text: str) -> None:
    """Print `text` as is: no rich markup (file names may contain brackets), no wrapping."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def run_command(body: Callable[[], T], *, debug: bool) -> T:
    """Run a command body: a CLIError becomes its one line and exit code, Ctrl-C exit 130, any other exception one
    line (exit 1) or, with --debug, the full traceback. Python warnings are shown as one `warning:` line each."""
    console = stderr_console()
    try:
        with _warnings_as_lines(console):
            return body()
    except CLIError as error:
        print_line(console, f"error: {one_line(error)}")
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        print_line(console, "interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:
        if debug:
            traceback.print_exc(file=sys.stderr)
        else:
            print_line(console, f"error: {type(error).__name__}: {one_line(error)} (--debug shows the traceback)")
        raise typer.Exit(EXIT_FAILURES) from None


@contextmanager
def _warnings_as_lines(console: Console) -> Iterator[None]:
    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (warnings API)
        print_line(console, f"warning: {one_line(message)}")

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """'3,7,9' -> (3, 7, 9)."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CLIError(
            f"--extract-layers {text!r}: expected comma-separated block numbers such as 3,7,9", EXIT_USAGE
        ) from None


def load_model_or_fail(
    source: str,
    *,
    device: str = "cpu",
    clip: str | None = None,
    extract_layers: str | None = None,
    console: Console | None = None,
) -> CLIPSeg:
    """`clipseg.load_model` with every loading problem (missing file, offline and not cached, corrupt weights)
    turned into a one-line CLIError. On a terminal `console` a spinner shows while the weights load."""
    from ..checkpoints.errors import CheckpointError
    from ..checkpoints.load import load_model

    layers = parse_layers(extract_layers)
    status = (
        console.status(f"loading model {source}", spinner="dots")
        if console is not None and console.is_terminal
        else nullcontext()
    )
    try:
        with status:
            return load_model(source, device=device, clip=clip, extract_layers=layers)
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as error:
        raise CLIError(one_line(error)) from None


def load_engine_or_fail(
    source: str,
    *,
    backend: Backend = Backend.torch,
    precision: Precision = Precision.fp32,
    device: str = "cpu",
    clip: str | None = None,
    extract_layers: str | None = None,
    console: Console | None = None,
) -> SegmentationModel:
    """What a `Predictor` runs: a PyTorch model at `precision` on `device` (a --device name, "auto" included), or
    onnxruntime sessions on an ONNX export folder. Every mismatch (an export given to torch, int8 on a GPU, ...) is
    a one-line CLIError."""
    from ..export.runtime import is_onnx_export

    is_export = is_onnx_export(source)
    if backend == Backend.onnx:
        if not is_export:
            raise CLIError(
                f"--backend onnx runs an ONNX export, and {source} is not one: write it with "
                f"`clipseg export-onnx {source} clipseg-onnx/`, then pass --model clipseg-onnx/",
                EXIT_USAGE,
            )
        if precision != Precision.fp32:
            raise CLIError(f"--precision {precision.value}: the ONNX backend runs fp32 graphs", EXIT_USAGE)
        if device not in ("auto", "cpu"):
            raise CLIError(f"--device {device}: the ONNX backend runs on the CPU (use --device cpu)", EXIT_USAGE)
        if clip is not None or extract_layers is not None:
            raise CLIError(
                "--clip and --extract-layers are fixed when a model is exported, not at run time", EXIT_USAGE
            )
        from ..export.runtime import OnnxModel

        try:
            return OnnxModel(source)
        except (FileNotFoundError, ValueError, OSError) as error:
            raise CLIError(one_line(error)) from None
        except Exception as error:  # onnxruntime reports unreadable graphs with its own exception types
            raise CLIError(f"{source}: onnxruntime could not load the export: {one_line(error)}") from None
    if is_export:
        raise CLIError(f"{source} is an ONNX export: run it with --backend onnx", EXIT_USAGE)
    from ..device import resolve_device
    from ..precision import apply_precision

    try:
        torch_device = resolve_device(device)
    except ValueError as error:
        raise CLIError(f"--device {error}", EXIT_USAGE) from None
    model = load_model_or_fail(
        source, device=str(torch_device), clip=clip, extract_layers=extract_layers, console=console
    )

    try:
        return apply_precision(model, precision.value)
    except ValueError as error:
        raise CLIError(f"--precision {precision.value}: {one_line(error)}", EXIT_USAGE) from None
