"""`clipseg export-onnx MODEL OUT_DIR`: write the ONNX graphs that `--backend onnx` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli.common import EXIT_USAGE, CLIError, load_model_or_fail, print_line, run_command, stderr_console


def export_onnx(
    model: Annotated[str, typer.Argument(help="Hub id, local checkpoint folder, or original .pth decoder file.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the .onnx graphs, config and tokenizer files.")],
    clip: Annotated[str | None, typer.Option(help="CLIP weights for an original .pth decoder file.")] = None,
    extract_layers: Annotated[
        str | None, typer.Option("--extract-layers", help="Override the CLIP blocks, e.g. 3,7,9.")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Square input side of the graphs (default: the model's, 352).")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
    check: Annotated[bool, typer.Option(help="Run the graphs once with onnxruntime and compare with PyTorch.")] = True,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Export image encoder, text encoder and decoder to ONNX (dynamic batch and prompt count)."""

    def body() -> None:
        from .onnx import export_onnx_model

        if image_size is not None and image_size < 1:
            raise CLIError(f"--image-size {image_size}: must be a positive number of pixels", EXIT_USAGE)
        if out_dir.exists() and not out_dir.is_dir():
            raise CLIError(f"{out_dir}: exists and is not a folder", EXIT_USAGE)
        loaded = load_model_or_fail(model, clip=clip, extract_layers=extract_layers)
        try:
            directory = export_onnx_model(loaded, out_dir, image_size=image_size, opset=opset)
        except ValueError as error:
            raise CLIError(str(error), EXIT_USAGE) from None
        console = stderr_console()
        if check:
            difference = _check(loaded, directory)
            print_line(console, f"onnxruntime vs PyTorch: max |Δ logits| {difference:.1e}")
            if difference > 1e-3:
                raise CLIError(f"the exported graphs disagree with PyTorch (max |Δ logits| {difference:.1e})")
        print_line(console, f"exported to {directory}")

    run_command(body, debug=debug)


def _check(model, directory: Path) -> float:
    """max |Δ logits| between onnxruntime and PyTorch on one random image and two prompts."""
    import torch

    from .runtime import OnnxModel

    onnx_model = OnnxModel(directory)
    side = onnx_model.config.image_size
    pixels = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    ids = model.tokenizer(["a photo of a cat.", "something to sit on"]).ids
    outputs = []
    for candidate in (model, onnx_model):
        with torch.inference_mode():
            features = candidate.extract_features(pixels)
            logits = candidate.decode(features, candidate.encode_text(ids), output_size=(side, side))
        outputs.append(logits.float())
    return (outputs[0] - outputs[1]).abs().max().item()
