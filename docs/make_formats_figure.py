"""Draw docs/images/formats.png: every `clipseg segment --format` on scikit-image's coffee photo.

The model is a tiny CLIPSeg with RANDOM weights (no pretrained weights can be downloaded where this runs), so the
picture shows what each output format looks like, not what the real model finds. Run:

    python docs/make_formats_figure.py
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import typer
from PIL import Image, ImageDraw, ImageFont
from skimage import data

import clipseg
from clipseg.cli import app
from clipseg.model.config import CLIPSegConfig, DecoderConfig, TextConfig, VisionConfig
from clipseg.testing import he_init_

FIGURE = Path(__file__).parent / "images" / "formats.png"
PROMPT = "a cup"
THRESHOLD = "0.15"
TILE_WIDTH = 300


def random_model(directory: Path) -> Path:
    """A tiny CLIPSeg with He-scaled random weights saved to `directory`. The head's kernels are made flat (one
    random weight per channel), so that each 16x16 patch gets one value: a blocky map instead of pixel noise."""
    config = CLIPSegConfig(
        vision=VisionConfig(width=64, layers=4, heads=2, mlp_width=128, patch_size=16, output_dim=32),
        text=TextConfig(width=32, layers=2, heads=2, mlp_width=64, output_dim=32),
        decoder=DecoderConfig(reduce_dim=16, heads=2, mlp_width=32, extract_layers=(1, 2, 3), head="simple"),
    )
    generator = torch.Generator().manual_seed(0)
    model = he_init_(clipseg.CLIPSeg(config), seed=generator)
    with torch.no_grad():
        head = model.decoder.trans_conv.weight  # (reduce_dim, 1, 16, 16)
        head.copy_(torch.randn(head.shape[0], 1, 1, 1, generator=generator).expand_as(head) * 0.5)
    return model.save_pretrained(directory)


def checkerboard(size: tuple[int, int], square: int = 12) -> Image.Image:
    y, x = np.mgrid[: size[1], : size[0]]
    values = np.where((x // square + y // square) % 2 == 0, 235, 200).astype(np.uint8)
    return Image.fromarray(values).convert("RGBA")


def tile(image: Image.Image, title: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    if image.mode == "RGBA":  # show transparency on a checkerboard
        image = Image.alpha_composite(checkerboard(image.size), image)
    image = image.convert("RGB")
    height = round(image.height * TILE_WIDTH / image.width)
    canvas = Image.new("RGB", (TILE_WIDTH, height + 28), "white")
    canvas.paste(image.resize((TILE_WIDTH, height), Image.Resampling.LANCZOS), (0, 28))
    ImageDraw.Draw(canvas).text((4, 4), title, fill="black", font=font)
    return canvas


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        photo = work / "coffee.jpg"
        Image.fromarray(data.coffee()).save(photo, quality=95)
        model_dir = random_model(work / "model")
        formats = [arg for fmt in ("mask", "soft", "heatmap", "overlay", "cutout", "rle") for arg in ("--format", fmt)]
        command = typer.main.get_command(app)
        command(
            [
                "segment",
                str(photo),
                "-p",
                PROMPT,
                "-t",
                THRESHOLD,
                "-o",
                str(work / "out"),
                "--model",
                str(model_dir),
                *formats,
            ],
            standalone_mode=False,
        )
        out = work / "out"
        font = ImageFont.load_default(size=16)
        panels = [
            (Image.open(photo), "input photo"),
            (Image.open(out / "coffee__a_cup.png"), "--format mask (default)"),
            (Image.open(out / "coffee__a_cup.soft.png"), "--format soft"),
            (Image.open(out / "coffee__a_cup.heatmap.jpg"), "--format heatmap"),
            (Image.open(out / "coffee__a_cup.overlay.jpg"), "--format overlay"),
            (Image.open(out / "coffee__a_cup.cutout.png"), "--format cutout (RGBA)"),
        ]
        tiles = [tile(image, title, font) for image, title in panels]
        columns, gap = 3, 6
        rows = math.ceil(len(tiles) / columns)
        tile_height = max(t.height for t in tiles)
        caption = (
            f'clipseg segment coffee.jpg -p "{PROMPT}" -t {THRESHOLD} --format ...   '
            "(tiny model with RANDOM weights: shows the formats, not segmentation quality)"
        )
        figure = Image.new(
            "RGB", (columns * TILE_WIDTH + (columns + 1) * gap, rows * (tile_height + gap) + gap + 30), "white"
        )
        for index, image in enumerate(tiles):
            row, column = divmod(index, columns)
            figure.paste(image, (gap + column * (TILE_WIDTH + gap), gap + row * (tile_height + gap)))
        ImageDraw.Draw(figure).text(
            (gap, figure.height - 26), caption, fill=(90, 0, 0), font=ImageFont.load_default(size=13)
        )
        FIGURE.parent.mkdir(parents=True, exist_ok=True)
        figure.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(FIGURE, optimize=True)  # keeps the file small
        print(f"wrote {FIGURE}")


if __name__ == "__main__":
    main()
