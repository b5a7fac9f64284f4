"""`clipseg info MODEL` and `clipseg convert SRC DST`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .common import EXIT_USAGE, CLIError, load_model_or_fail, print_line, run_command, stderr_console
from .options import ClipOption, DebugOption, LayersOption, ModelArgument


def info(
    model: ModelArgument,
    clip: ClipOption = None,
    extract_layers: LayersOption = None,
    debug: DebugOption = False,
) -> None:
    """Show a model's architecture, preprocessing and parameter counts."""

    def body() -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        loaded = load_model_or_fail(model, clip=clip, extract_layers=extract_layers)
        config = loaded.config
        vision, text, decoder = config.vision, config.text, config.decoder
        trainable = sum(p.numel() for p in loaded.decoder.parameters())
        total = sum(p.numel() for p in loaded.parameters())
        table = Table(title=Text(f"clipseg model {model}"), show_header=False)
        table.add_column()
        table.add_column()
        rows = [
            (
                "vision",
                f"ViT width {vision.width}, {vision.layers} layers, {vision.heads} heads, patch {vision.patch_size}, "
                f"trained at {vision.image_size}px",
            ),
            (
                "text",
                f"width {text.width}, {text.layers} layers, {text.heads} heads, context {text.context_length}, "
                f"vocabulary {text.vocab_size}",
            ),
            ("conditional vector", f"{vision.output_dim}-d"),
            (
                "decoder",
                f"reduce_dim {decoder.reduce_dim}, {decoder.heads} heads, {decoder.head} head, "
                f"FiLM at step {decoder.cond_layer}",
            ),
            ("extract layers", ", ".join(str(layer) for layer in decoder.extract_layers)),
            ("input", f"{config.image_size}x{config.image_size}"),
            ("normalisation", f"mean {tuple(config.image_mean)}, std {tuple(config.image_std)}"),
            ("parameters", f"{total:,} ({trainable:,} in the decoder)"),
        ]
        for name, value in rows:
            table.add_row(name, Text(value))
        Console(highlight=False).print(table)

    run_command(body, debug=debug)


Layout = Enum("Layout", {name: name for name in ("clipseg", "transformers", "original")}, type=str)


def convert(
    source: Annotated[str, typer.Argument(help="Hub id, transformers folder, or original .pth decoder file.")],
    destination: Annotated[Path, typer.Argument(help="Folder to write.")],
    to: Annotated[
        Layout,
        typer.Option(
            "--to",
            help="Layout to write: clipseg (this package's), transformers (CLIPSegForImageSegmentation.from_pretrained,"
            " transformers.js, the hub) or original (the original repository's rd64-uni*.pth decoder file).",
        ),
    ] = Layout.clipseg,
    clip: ClipOption = None,
    extract_layers: LayersOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a folder that is not empty.")] = False,
    debug: DebugOption = False,
) -> None:
    """Convert any checkpoint `load_model` reads into this package's format (loadable with --model DST), transformers'
    CLIPSeg layout, or the original repository's decoder file."""

    def body() -> None:
        if destination.exists() and not destination.is_dir():
            raise CLIError(f"{destination} exists and is not a folder", EXIT_USAGE)
        if destination.is_dir() and any(destination.iterdir()) and not overwrite:
            raise CLIError(f"{destination} is not empty (pass --overwrite to write into it)", EXIT_USAGE)
        from ..checkpoints.convert import ConversionError
        from ..checkpoints.publish import save_model

        loaded = load_model_or_fail(source, clip=clip, extract_layers=extract_layers)
        try:
            save_model(loaded, destination, to.value)
        except ConversionError as error:
            raise CLIError(f"cannot write {source} in the {to.value} layout: {error}", EXIT_USAGE) from None
        except OSError as error:
            raise CLIError(f"cannot write {destination}: {error.strerror or error}") from None
        print_line(stderr_console(), f"wrote {destination} ({to.value} layout)")

    run_command(body, debug=debug)
