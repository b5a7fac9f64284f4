"""`clipseg segment` (masks per image and prompt) and `clipseg labels` (one label map per image).

Both walk folders recursively, skip images whose outputs all exist (unless --overwrite), run the backbone once per
batch of images, write every file atomically, report each bad input as one line and keep going, print a summary
and exit with status 1 if any input failed. torch, numpy and PIL are imported only when a command runs.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    DEFAULT_MODEL,
    Backend,
    BackendOption,
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CLIError,
    ClipOption,
    DebugOption,
    LayersOption,
    Precision,
    PrecisionOption,
    load_engine_or_fail,
    one_line,
    print_line,
    run_command,
    stderr_console,
)

if TYPE_CHECKING:
    from PIL import Image
    from rich.console import Console

    from ..postprocess import MaskOptions
    from ..predictor import ImagePrompt, Prediction, Predictor, Prompt


class OutputFormat(str, Enum):
    """What `clipseg segment` writes per image and prompt."""

    mask = "mask"
    soft = "soft"
    heatmap = "heatmap"
    overlay = "overlay"
    cutout = "cutout"
    rle = "rle"


class TemplateSet(str, Enum):
    """The paper's text prompt templates."""

    plain = "plain"
    fixed = "fixed"
    shuffle = "shuffle"
    shuffle_plus = "shuffle+"


# File name endings per format; "rle" is one JSON file per image holding every prompt.
SUFFIXES = {
    OutputFormat.mask: ".png",
    OutputFormat.soft: ".soft.png",
    OutputFormat.heatmap: ".heatmap.jpg",
    OutputFormat.overlay: ".overlay.jpg",
    OutputFormat.cutout: ".cutout.png",
    OutputFormat.rle: ".rle.json",
}
PROMPT_SEPARATOR = "__"
LABEL_SUFFIX = ".labels.png"
LABEL_OVERLAY_SUFFIX = ".labels-overlay.jpg"
LEGEND_NAME = "labels.json"
MAX_LISTED_FAILURES = 50

# Options shared by both commands.
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


@dataclass
class Job:
    """One input image and the files it should produce."""

    source: Path
    stem: Path  # output folder / sanitised image name, without suffix
    # (kind, prompt index or None for one file per image) -> path
    files: dict[tuple[str, int | None], Path] = field(default_factory=dict)

    def path(self, output: Path, suffix: str) -> Path:
        return output / self.stem.with_name(self.stem.name + suffix)

    def done(self) -> bool:
        return all(path.exists() for path in self.files.values())


@dataclass(frozen=True)
class RunSettings:
    """The options `segment` and `labels` share: which model, and how to run it over the images."""

    command: str
    model: str
    clip: str | None
    extract_layers: str | None
    device: str
    precision: Precision
    backend: Backend
    batch_size: int
    overwrite: bool
    templates: TemplateSet
    ensemble: bool
    debug: bool


@dataclass
class Summary:
    found: int = 0
    segmented: int = 0
    skipped: int = 0
    files_written: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def segment(
    inputs: InputsArgument,
    output: OutputOption,
    prompt: PromptOption = None,
    negative: NegativeOption = None,
    support: Annotated[
        list[Path] | None,
        typer.Option(
            help="Support image of an image prompt; repeat for several examples.",
            show_default=False,
            rich_help_panel="Prompts",
        ),
    ] = None,
    support_mask: Annotated[
        list[Path] | None,
        typer.Option(
            help="Object mask of each --support image (same size).", show_default=False, rich_help_panel="Prompts"
        ),
    ] = None,
    support_name: Annotated[
        str, typer.Option(help="Name of the image prompt in output file names.", rich_help_panel="Prompts")
    ] = "support",
    visual_prompt: Annotated[
        str,
        typer.Option(
            help="Visual prompt engineering variant (paper Table 2), e.g. crop_blur_highlight, cls_mask_last.",
            rich_help_panel="Prompts",
        ),
    ] = "crop_blur_highlight",
    mix: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Combine each text prompt with the image prompt; weight of the text.",
            rich_help_panel="Prompts",
        ),
    ] = None,
    templates: TemplatesOption = TemplateSet.plain,
    ensemble: EnsembleOption = False,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold", "-t", min=0.0, max=1.0, help="Probability for a mask pixel.", rich_help_panel="Masks"
        ),
    ] = 0.4,
    output_format: Annotated[
        list[OutputFormat] | None,
        typer.Option(
            "--format", "-f", help="Output kind; repeat for several. [default: mask]", rich_help_panel="Masks"
        ),
    ] = None,
    union: Annotated[
        bool,
        typer.Option("--union", help="One output per image for the union of all prompts.", rich_help_panel="Masks"),
    ] = False,
    min_area: Annotated[
        int, typer.Option(min=0, help="Drop mask components smaller than this many pixels.", rich_help_panel="Masks")
    ] = 0,
    dilate: Annotated[
        float, typer.Option(min=0.0, help="Grow masks by this many pixels.", rich_help_panel="Masks")
    ] = 0.0,
    erode: Annotated[
        float, typer.Option(min=0.0, help="Shrink masks by this many pixels (after --dilate).", rich_help_panel="Masks")
    ] = 0.0,
    invert: Annotated[
        bool, typer.Option("--invert", help="Output the background instead of the object.", rich_help_panel="Masks")
    ] = False,
    feather: Annotated[
        float, typer.Option(min=0.0, help="Soften mask edges (Gaussian sigma in pixels).", rich_help_panel="Masks")
    ] = 0.0,
    model: ModelOption = DEFAULT_MODEL,
    clip: ClipOption = None,
    extract_layers: LayersOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.fp32,
    backend: BackendOption = Backend.torch,
    batch_size: BatchOption = 4,
    overwrite: OverwriteOption = False,
    max_pixels: MaxPixelsOption = None,
    debug: DebugOption = False,
) -> None:
    """Segment images from text prompts and/or an image prompt: one mask per image and prompt.

    Example: clipseg segment photos/ -p "a cup" -p "something to sit on" -o masks/
    """
    formats = list(dict.fromkeys(output_format or [OutputFormat.mask]))
    settings = RunSettings(
        "segment", model, clip, extract_layers, device, precision, backend, batch_size, overwrite, templates, ensemble,
        debug,
    )

    def body() -> int:
        from ..postprocess import MaskOptions

        texts = _texts(prompt, "--prompt")
        negatives = _texts(negative, "--negative")
        try:
            options = MaskOptions(
                threshold=threshold, min_area=min_area, dilate=dilate, erode=erode, invert=invert, feather=feather
            )
        except ValueError as error:
            raise CLIError(one_line(error), EXIT_USAGE) from None
        _limit_pixels(max_pixels)
        console = stderr_console()
        image_prompt = _image_prompt(support, support_mask, support_name, visual_prompt)
        prompts, names = _combine(texts, image_prompt, mix)
        entry_names = [" or ".join(names)] if union else names
        jobs, failures = plan_jobs(inputs, output, console)
        slugs = _slugs(entry_names)
        for job in jobs:
            for fmt in formats:
                if fmt == OutputFormat.rle:
                    job.files[(fmt.value, None)] = job.path(output, SUFFIXES[fmt])
                else:
                    for index, slug in enumerate(slugs):
                        job.files[(fmt.value, index)] = job.path(output, f"{PROMPT_SEPARATOR}{slug}{SUFFIXES[fmt]}")
        _prepare_output(output)

        def write(job: Job, image: Image.Image, prediction: Prediction) -> int:
            return _write_segmentation(job, image, prediction, formats, options, union, entry_names, overwrite)

        return _run(
            jobs, failures, output, console, prompts=prompts, negatives=negatives, write=write, settings=settings
        )

    _exit_with(run_command(body, debug=debug))


def labels(
    inputs: InputsArgument,
    output: OutputOption,
    prompt: PromptOption = None,
    negative: NegativeOption = None,
    background_threshold: Annotated[
        float,
        typer.Option(
            "--background-threshold", "-t", min=0.0, max=1.0, help="Pixels where no prompt reaches this are background."
        ),
    ] = 0.4,
    templates: TemplatesOption = TemplateSet.plain,
    ensemble: EnsembleOption = False,
    model: ModelOption = DEFAULT_MODEL,
    clip: ClipOption = None,
    extract_layers: LayersOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.fp32,
    backend: BackendOption = Backend.torch,
    batch_size: BatchOption = 4,
    overwrite: OverwriteOption = False,
    max_pixels: MaxPixelsOption = None,
    debug: DebugOption = False,
) -> None:
    """Multi-label maps: each pixel gets the most probable prompt, or background (zero-shot semantic segmentation).

    Writes NAME.labels.png (palette PNG, pixel value = label: 0 background, 1.. the prompts in order),
    NAME.labels-overlay.jpg (colours and a legend over the photo) and labels.json (the legend).

    Example: clipseg labels photos/ -p cat -p dog -p sofa -o labels/
    """
    settings = RunSettings(
        "labels", model, clip, extract_layers, device, precision, backend, batch_size, overwrite, templates, ensemble,
        debug,
    )

    def body() -> int:
        from ..outputs import label_colours, save_json

        texts = _texts(prompt, "--prompt")
        if not texts:
            raise CLIError("give the classes to label with -p, e.g. -p cat -p dog", EXIT_USAGE)
        if len(texts) > 255:
            raise CLIError(f"{len(texts)} prompts: a label map holds at most 255", EXIT_USAGE)
        negatives = _texts(negative, "--negative")
        _limit_pixels(max_pixels)
        console = stderr_console()
        jobs, failures = plan_jobs(inputs, output, console)
        for job in jobs:
            job.files = {
                ("labels", None): job.path(output, LABEL_SUFFIX),
                ("overlay", None): job.path(output, LABEL_OVERLAY_SUFFIX),
            }
        colours = label_colours(len(texts))
        legend = {
            "background_threshold": background_threshold,
            "labels": [
                {"value": value, "name": name, "colour": list(colours[value])}
                for value, name in enumerate(["background", *texts])
            ],
        }

        def write(job: Job, image: Image.Image, prediction: Prediction) -> int:
            return _write_labels(job, image, prediction, background_threshold, overwrite)

        _prepare_output(output)
        save_json(legend, output / LEGEND_NAME)  # rewritten each run: cheap, and always matches the prompts
        return _run(jobs, failures, output, console, prompts=texts, negatives=negatives, write=write, settings=settings)

    _exit_with(run_command(body, debug=debug))


def _exit_with(status: int) -> None:
    if status:
        raise typer.Exit(status)


def plan_jobs(arguments: Sequence[Path], output: Path, console: Console) -> tuple[list[Job], list[tuple[str, str]]]:
    """Find the images named or inside the folders (recursively, hidden entries and the output folder skipped) and
    give each a unique sanitised output stem that mirrors its place below the folder it was found in."""
    from ..image import IMAGE_SUFFIXES
    from ..outputs import safe_name

    failures: list[tuple[str, str]] = []
    found: list[tuple[Path, tuple[str, ...]]] = []
    seen: set[Path] = set()
    output_resolved = output.resolve()
    for argument in arguments:
        if argument.is_dir() and argument.resolve() == output_resolved:
            raise CLIError(
                f"{argument} is both an input and the output folder (its outputs would be read as inputs next time): "
                f"write to a subfolder, e.g. -o {argument / 'masks'}",
                EXIT_USAGE,
            )
        if argument.is_dir():
            sources = [
                (path, path.relative_to(argument).parent.parts)
                for path in _walk(argument, output_resolved, IMAGE_SUFFIXES)
            ]
            if not sources:
                print_line(console, f"warning: {argument}: no image files found")
        elif argument.exists():
            sources = [(argument, ())]
        else:
            failures.append((str(argument), "no such file or directory"))
            continue
        for path, folders in sources:
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                found.append((path, folders))

    def stem_for(path: Path, folders: tuple[str, ...], extra: str = "") -> Path:
        name = safe_name(path.stem + extra, fallback="image")
        return Path(*(safe_name(folder, fallback="folder") for folder in folders), name)

    stems = [stem_for(path, folders) for path, folders in found]
    # Same name with another suffix (photo.jpg, photo.png): tell them apart by the suffix, then by a hash.
    for attempt in ("suffix", "hash"):
        counts: dict[str, int] = {}
        for stem in stems:
            counts[str(stem).lower()] = counts.get(str(stem).lower(), 0) + 1
        for index, ((path, folders), stem) in enumerate(zip(found, stems, strict=True)):
            if counts[str(stem).lower()] > 1:
                extra = f"_{path.suffix.lstrip('.')}" if attempt == "suffix" else f"-{_digest(str(path.resolve()))}"
                stems[index] = (
                    stem.with_name(stem.name + extra) if attempt == "hash" else stem_for(path, folders, extra)
                )
    return [Job(path, stem) for (path, _), stem in zip(found, stems, strict=True)], failures


def _walk(root: Path, skip: Path, suffixes: frozenset[str]) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(root):
        here = Path(directory)
        subdirectories[:] = sorted(
            name for name in subdirectories if not name.startswith(".") and (here / name).resolve() != skip
        )
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                yield here / name


def _run(
    jobs: list[Job],
    failures: list[tuple[str, str]],
    output: Path,
    console: Console,
    *,
    prompts: Sequence[Prompt],
    negatives: Sequence[str],
    write: Callable[[Job, Image.Image, Prediction], int],
    settings: RunSettings,
) -> int:
    """Segment the jobs whose outputs are missing (all with --overwrite), print the summary; returns the exit
    status."""
    summary = Summary(found=len(jobs) + len(failures), failures=list(failures))
    for source, reason in failures:
        print_line(console, f"error: {source}: {reason}")
    if not jobs and not failures:
        raise CLIError("no images to segment", EXIT_USAGE)
    todo = [job for job in jobs if settings.overwrite or not job.done()]
    summary.skipped = len(jobs) - len(todo)
    if not todo:
        return _finish(summary, output, settings.command)
    from ..predictor import Predictor
    from ..progress import progress_bar

    loaded = load_engine_or_fail(
        settings.model,
        backend=settings.backend,
        precision=settings.precision,
        device=settings.device,
        clip=settings.clip,
        extract_layers=settings.extract_layers,
        console=console,
    )
    predictor = Predictor(loaded)
    predict_options = {"templates": settings.templates.value, "ensemble": settings.ensemble}
    try:
        with progress_bar(console=console, disable=not console.is_terminal) as progress:
            task = progress.add_task("segmenting", total=len(todo))
            for start in range(0, len(todo), settings.batch_size):
                batch = todo[start : start + settings.batch_size]
                progress.update(task, description=_short(batch[0].source.name))
                _run_batch(
                    batch, predictor, prompts, negatives, predict_options, write, summary, console, settings.debug
                )
                progress.advance(task, len(batch))
    except KeyboardInterrupt:
        print_line(console, "interrupted: finished files are kept; run the same command again to do the rest")
        _print_summary(summary, output, settings.command)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    return _finish(summary, output, settings.command)


def _run_batch(
    batch: list[Job],
    predictor: Predictor,
    prompts: Sequence[Prompt],
    negatives: Sequence[str],
    predict_options: dict,
    write: Callable[[Job, Image.Image, Prediction], int],
    summary: Summary,
    console: Console,
    debug: bool,
) -> None:
    from ..image import load_image

    def fail(job: Job, error: BaseException) -> None:
        reason = (
            one_line(error)
            if isinstance(error, (OSError, ValueError))
            else f"{type(error).__name__}: {one_line(error)}"
        )
        reason = reason if str(job.source) in reason else f"{job.source}: {reason}"
        summary.failures.append((str(job.source), reason.removeprefix(f"{job.source}: ")))
        print_line(console, f"error: {reason}")
        if debug:
            traceback.print_exc()

    loaded: list[tuple[Job, Image.Image]] = []
    for job in batch:
        try:
            loaded.append((job, load_image(job.source)))
        except Exception as error:  # every unreadable file is reported and skipped, the run goes on
            fail(job, error)
    if not loaded:
        return
    try:
        predictions = predictor.predict_batch(
            [image for _, image in loaded], list(prompts), negative=list(negatives), **predict_options
        )
    except Exception as error:
        for job, _ in loaded:
            fail(job, error)
        return
    for (job, image), prediction in zip(loaded, predictions, strict=True):
        try:
            summary.files_written += write(job, image, prediction)
            summary.segmented += 1
        except Exception as error:
            fail(job, error)


def _write_segmentation(
    job: Job,
    image: Image.Image,
    prediction: Prediction,
    formats: list[OutputFormat],
    options: MaskOptions,
    union: bool,
    entry_names: list[str],
    overwrite: bool,
) -> int:
    from ..outputs import (
        cutout,
        heatmap_overlay,
        label_colours,
        mask_image,
        mask_overlay,
        rle_annotation,
        save_image,
        save_json,
    )

    per_entry = [fmt for fmt in formats if fmt != OutputFormat.rle]
    written = 0
    annotations = []
    colours = label_colours(len(entry_names))
    rle_path = job.files.get((OutputFormat.rle.value, None))
    want_rle = rle_path is not None and (overwrite or not rle_path.exists())
    for index, name in enumerate(entry_names):
        planned = [(fmt, job.files[(fmt.value, index)]) for fmt in per_entry]
        todo = [(fmt, path) for fmt, path in planned if overwrite or not path.exists()]
        if not todo and not want_rle:
            continue
        probabilities = (prediction.union_probability() if union else prediction.probability(index)).numpy()
        binary = options.binary(probabilities)
        alpha = options.apply(probabilities) if options.feather > 0 else binary
        if want_rle:
            annotations.append(rle_annotation(binary, probabilities, prompt=name, threshold=options.threshold))
        for fmt, path in todo:
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == OutputFormat.mask:
                save_image(mask_image(alpha), path)
            elif fmt == OutputFormat.soft:
                save_image(mask_image(1.0 - probabilities if options.invert else probabilities), path)
            elif fmt == OutputFormat.heatmap:
                save_image(heatmap_overlay(image, probabilities), path)
            elif fmt == OutputFormat.overlay:
                save_image(mask_overlay(image, alpha, colour=colours[index + 1]), path)
            elif fmt == OutputFormat.cutout:
                save_image(cutout(image, alpha), path)
            written += 1
    if want_rle:
        rle_path.parent.mkdir(parents=True, exist_ok=True)
        record = {"image": str(job.source), "height": image.height, "width": image.width, "annotations": annotations}
        save_json(record, rle_path)
        written += 1
    return written


def _write_labels(
    job: Job, image: Image.Image, prediction: Prediction, background_threshold: float, overwrite: bool
) -> int:
    from ..outputs import label_image, label_overlay, save_image

    label_path, overlay_path = job.files[("labels", None)], job.files[("overlay", None)]
    label_map = prediction.label_map(background_threshold).numpy()
    written = 0
    label_path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite or not label_path.exists():
        save_image(label_image(label_map, len(prediction.names)), label_path)
        written += 1
    if overwrite or not overlay_path.exists():
        save_image(label_overlay(image, label_map, prediction.names), overlay_path)
        written += 1
    return written


def _texts(values: list[str] | None, option: str) -> list[str]:
    texts = []
    for value in values or []:
        if not value.strip():
            raise CLIError(f"empty prompt: {option} needs text, e.g. {option} 'a cup'", EXIT_USAGE)
        texts.append(value)
    return list(dict.fromkeys(texts))


def _image_prompt(supports: list[Path] | None, masks: list[Path] | None, name: str, variant: str) -> ImagePrompt | None:
    supports, masks = supports or [], masks or []
    if len(supports) != len(masks):
        raise CLIError(
            f"{len(supports)} --support image(s) but {len(masks)} --support-mask(s): give one mask per support image",
            EXIT_USAGE,
        )
    if not supports:
        return None
    from ..predictor import ImagePrompt

    try:
        return ImagePrompt(supports, masks, variant=variant, name=name)
    except (ValueError, OSError) as error:
        raise CLIError(one_line(error), EXIT_USAGE) from None


def _combine(texts: list[str], image_prompt: ImagePrompt | None, mix: float | None) -> tuple[list[Prompt], list[str]]:
    """The prompts to run and their names: texts, then the image prompt; or with --mix each text mixed with it."""
    if not texts and image_prompt is None:
        raise CLIError(
            "nothing to segment: give a text prompt (-p 'a cup') or --support IMG --support-mask MASK", EXIT_USAGE
        )
    if mix is not None:
        if image_prompt is None or not texts:
            raise CLIError("--mix combines text prompts with an image prompt: give both -p and --support", EXIT_USAGE)
        from ..predictor import MixedPrompt

        return [MixedPrompt(text, image_prompt, mix) for text in texts], texts
    prompts = [*texts, *([image_prompt] if image_prompt is not None else [])]
    return prompts, [*texts, *([image_prompt.name] if image_prompt is not None else [])]


def _slugs(names: list[str]) -> list[str]:
    from ..outputs import unique_names

    return unique_names(names, keep_dots=False)


def _prepare_output(output: Path) -> None:
    """Create the output folder, prove it is writable, and clear temporaries of runs that were killed."""
    from ..fileio import remove_stale_temporaries, write_bytes

    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".clipseg-write-test"
        write_bytes(probe, b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or one_line(error)
        raise CLIError(f"cannot write to output folder {output}: {reason}") from None
    remove_stale_temporaries(output)


def _limit_pixels(max_pixels: int | None) -> None:
    if max_pixels is not None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = max_pixels or None


def _finish(summary: Summary, output: Path, command: str) -> int:
    _print_summary(summary, output, command)
    return EXIT_FAILURES if summary.failures else 0


def _print_summary(summary: Summary, output: Path, command: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    table = Table(title=f"clipseg {command}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("images", str(summary.found))
    table.add_row("segmented", str(summary.segmented))
    table.add_row("skipped (outputs exist; --overwrite redoes them)", str(summary.skipped))
    table.add_row("failed", str(len(summary.failures)))
    table.add_row("files written", str(summary.files_written))
    table.add_row("output folder", Text(str(output)))
    console.print(table)
    if summary.failures:
        failed = Table(title="failed inputs", show_lines=False)
        failed.add_column("input", overflow="fold")
        failed.add_column("reason", overflow="fold")
        for source, reason in summary.failures[:MAX_LISTED_FAILURES]:
            failed.add_row(Text(source), Text(reason))
        if len(summary.failures) > MAX_LISTED_FAILURES:
            failed.add_row(f"… and {len(summary.failures) - MAX_LISTED_FAILURES} more", "")
        console.print(failed)


def _short(name: str, limit: int = 30) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
