"""The arguments and options of the commands, declared once; the choice lists come from the library's own tuples.

Only typer and torch-free modules are imported here: `clipseg --help` must stay fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..batch.engines import ENGINES
from ..number_formats import PRECISIONS
from ..templates import TEMPLATES
from ..video import FORMATS as VIDEO_FORMATS


def _choices(name: str, values: Iterable[str], doc: str) -> type[Enum]:
    """A str Enum Typer offers as a choice list: one member per value ("shuffle+" is the member shuffle_plus)."""
    choices = Enum(name, {value.replace("+", "_plus"): value for value in values}, type=str, module=__name__)
    choices.__doc__ = doc
    return choices


Precision = _choices("Precision", PRECISIONS, "Number format of inference (`clipseg.precision.apply_precision`).")
TemplateSet = _choices("TemplateSet", TEMPLATES, "The paper's text prompt templates (`clipseg.templates`).")
Engine = _choices("Engine", ENGINES, "Where `clipseg segment` runs the model (`clipseg.batch.engines`).")


class OutputFormat(str, Enum):
    """What `clipseg segment` writes per image and prompt."""

    mask = "mask"
    soft = "soft"
    heatmap = "heatmap"
    overlay = "overlay"
    cutout = "cutout"
    rle = "rle"


VideoFormat = _choices("VideoFormat", VIDEO_FORMATS, "What `clipseg video` writes per video (`clipseg.video.writers`).")


class Backend(str, Enum):
    """What runs the model: PyTorch, or onnxruntime on a `clipseg export-onnx` folder."""

    torch = "torch"
    onnx = "onnx"


# Every command that loads a model.
ModelArgument = Annotated[str, typer.Argument(help="Hub id, local checkpoint folder, or original .pth decoder file.")]
ClipOption = Annotated[
    str | None, typer.Option(help="CLIP weights for an original .pth decoder file.", rich_help_panel="Model")
]
LayersOption = Annotated[
    str | None,
    typer.Option(
        "--extract-layers", help="Override the CLIP blocks the decoder reads, e.g. 3,7,9.", rich_help_panel="Model"
    ),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        help="fp32; bf16 (CPUs with AVX-512 BF16/AMX, GPUs); fp16 (GPUs); int8 (CPU, dynamic quantisation).",
        rich_help_panel="Model",
    ),
]
BackendOption = Annotated[
    Backend,
    typer.Option(
        help="torch, or onnx: --model is then a folder written by `clipseg export-onnx`.", rich_help_panel="Model"
    ),
]

# The commands that run a model over folders of images (segment, labels).
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Hub id, local checkpoint folder, or original .pth decoder file (with --clip).",
        rich_help_panel="Model",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel="Model")]
BatchOption = Annotated[
    int, typer.Option("--batch-size", "-b", min=1, help="Images per backbone call.", rich_help_panel="Model")
]
OutputOption = Annotated[
    Path, typer.Option("--output", "-o", help="Output folder (created if missing).", show_default=False)
]
# `clipseg segment`: the folder may be on any pyarrow file system (clipseg.batch.store).
OutputTargetOption = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        help="Output folder (created if missing): a path or a pyarrow file-system URI, e.g. s3://bucket/masks.",
        show_default=False,
        metavar="FOLDER_OR_URI",
    ),
]
InputsArgument = Annotated[
    list[Path],
    typer.Argument(
        help="Image files and folders (searched recursively).", metavar="IMAGES_OR_DIRS", show_default=False
    ),
]
PromptOption = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt", "-p", help="Text prompt; repeat for several.", show_default=False, rich_help_panel="Prompts"
    ),
]
NegativeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--negative",
        "-n",
        help="Remove regions matching this text; repeatable.",
        show_default=False,
        rich_help_panel="Prompts",
    ),
]
TemplatesOption = Annotated[
    TemplateSet, typer.Option(help="Text prompt templates from the paper.", rich_help_panel="Prompts")
]
EnsembleOption = Annotated[
    bool,
    typer.Option("--ensemble", help="Average the prompt over all templates of the set.", rich_help_panel="Prompts"),
]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Redo images whose outputs exist (default: skip them).")
]
MaxPixelsOption = Annotated[
    int | None, typer.Option(help="Refuse images with more pixels (Pillow's decompression-bomb limit); 0 = no limit.")
]

# `clipseg segment` only: image prompts.
SupportOption = Annotated[
    list[Path] | None,
    typer.Option(
        help="Support image of an image prompt; repeat for several examples.",
        show_default=False,
        rich_help_panel="Prompts",
    ),
]
SupportMaskOption = Annotated[
    list[Path] | None,
    typer.Option(
        help="Object mask of each --support image (same size).", show_default=False, rich_help_panel="Prompts"
    ),
]
SupportNameOption = Annotated[
    str, typer.Option(help="Name of the image prompt in output file names.", rich_help_panel="Prompts")
]
VisualPromptOption = Annotated[
    str,
    typer.Option(
        help="Visual prompt engineering variant (paper Table 2), e.g. crop_blur_highlight, cls_mask_last.",
        rich_help_panel="Prompts",
    ),
]
MixOption = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Combine each text prompt with the image prompt; weight of the text.",
        rich_help_panel="Prompts",
    ),
]

# `clipseg segment` only: masks.
ThresholdOption = Annotated[
    str | None,
    typer.Option(
        "--threshold",
        "-t",
        help="Probability a mask pixel must exceed (0-1), or a thresholds.json from `clipseg eval --write-thresholds` "
        "(per prompt, overall for the rest). Default: the model directory's thresholds.json if it has one, else 0.4.",
        metavar="T|FILE",
        show_default=False,
        rich_help_panel="Masks",
    ),
]
FormatOption = Annotated[
    list[OutputFormat] | None,
    typer.Option("--format", "-f", help="Output kind; repeat for several. [default: mask]", rich_help_panel="Masks"),
]
UnionOption = Annotated[
    bool,
    typer.Option("--union", help="One output per image for the union of all prompts.", rich_help_panel="Masks"),
]
MinAreaOption = Annotated[
    int, typer.Option(min=0, help="Drop mask components smaller than this many pixels.", rich_help_panel="Masks")
]
DilateOption = Annotated[float, typer.Option(min=0.0, help="Grow masks by this many pixels.", rich_help_panel="Masks")]
ErodeOption = Annotated[
    float, typer.Option(min=0.0, help="Shrink masks by this many pixels (after --dilate).", rich_help_panel="Masks")
]
InvertOption = Annotated[
    bool, typer.Option("--invert", help="Output the background instead of the object.", rich_help_panel="Masks")
]
FeatherOption = Annotated[
    float, typer.Option(min=0.0, help="Soften mask edges (Gaussian sigma in pixels).", rich_help_panel="Masks")
]

# `clipseg segment` only: watched folders.
WatchOption = Annotated[
    bool,
    typer.Option(
        "--watch",
        help="Keep running: segment new and changed images as they appear in the folders (Ctrl-C stops).",
        rich_help_panel="Watch",
    ),
]
SettleOption = Annotated[
    float,
    typer.Option(
        min=0.05,
        help="With --watch: seconds a file's size must stay the same before it is read (files being copied wait).",
        rich_help_panel="Watch",
    ),
]

# `clipseg video` only.
VideosArgument = Annotated[
    list[Path],
    typer.Argument(
        help="Video files and folders (searched recursively).", metavar="VIDEOS_OR_DIRS", show_default=False
    ),
]
VideoFormatOption = Annotated[
    list[VideoFormat] | None,
    typer.Option(
        "--format",
        "-f",
        help="frames: a mask PNG per frame; video: a lossless mask video per prompt; overlay: one overlay video; "
        "rle: COCO RLE per frame in JSON Lines. Repeat for several (default: frames).",
        rich_help_panel="Masks",
    ),
]
SmoothOption = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Temporal smoothing: weight of the past, 0 (off) to 1, dropping where the frame's colours change (moving "
        "things are not smeared); scene cuts reset it.",
        rich_help_panel="Video",
    ),
]
EveryOption = Annotated[
    int,
    typer.Option(
        min=1, help="Run the model on every N-th frame and interpolate in between (faster).", rich_help_panel="Video"
    ),
]

# `clipseg labels` only.
BackgroundThresholdOption = Annotated[
    str | None,
    typer.Option(
        "--background-threshold",
        "-t",
        help="Pixels whose best prompt does not exceed this are background: 0-1, or a thresholds.json (per prompt). "
        "Default: the model directory's thresholds.json if it has one, else 0.4.",
        metavar="T|FILE",
        show_default=False,
    ),
]

# `clipseg segment` only: collections, and where they run (`clipseg.batch`).
OptionalInputsArgument = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Image files and folders (searched recursively); optional with --manifest-in.",
        metavar="[IMAGES_OR_DIRS]...",
        show_default=False,
    ),
]
ManifestInOption = Annotated[
    str | None,
    typer.Option(
        "--manifest-in",
        help="CSV or Parquet file whose 'path' column lists images (paths or URIs such as s3://bucket/a.jpg).",
        show_default=False,
        rich_help_panel="Collections",
    ),
]
ManifestOption = Annotated[
    str | None,
    typer.Option(
        "--manifest",
        help="Also write a Parquet table: one row per image and prompt (mask file, COCO RLE, area, ...); a path or "
        "a pyarrow file-system URI.",
        show_default=False,
        metavar="FILE_OR_URI",
        rich_help_panel="Collections",
    ),
]
EngineOption = Annotated[
    Engine,
    typer.Option(
        help="local: this process; ray: a Ray cluster (needs the ray extra of clipseg).", rich_help_panel="Collections"
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join (auto, HOST:6379, ray://HOST:10001); default: start a local one.",
        show_default=False,
        rich_help_panel="Collections",
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Model actors with --engine ray; default: one per GPU, else one per 2 CPUs.",
        show_default=False,
        rich_help_panel="Collections",
    ),
]
