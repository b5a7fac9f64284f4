"""`clipseg segment`: one mask (or soft mask, heatmap, overlay, cutout, RLE) per image and prompt."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .common import DEFAULT_MODEL, EXIT_USAGE, CLIError, one_line, run_command, stderr_console
from .jobs import Failure, Job, plan_jobs, plan_segment_outputs, prepare_output
from .options import (
    Backend,
    BackendOption,
    BatchOption,
    ClipOption,
    DebugOption,
    DeviceOption,
    DilateOption,
    EnsembleOption,
    ErodeOption,
    FeatherOption,
    FormatOption,
    InputsArgument,
    InvertOption,
    LayersOption,
    MaxPixelsOption,
    MinAreaOption,
    MixOption,
    ModelOption,
    NegativeOption,
    OutputFormat,
    OutputOption,
    OverwriteOption,
    Precision,
    PrecisionOption,
    PromptOption,
    SettleOption,
    SupportMaskOption,
    SupportNameOption,
    SupportOption,
    TemplateSet,
    TemplatesOption,
    ThresholdOption,
    UnionOption,
    VisualPromptOption,
    WatchOption,
)
from .runner import RunSettings, exit_with, limit_pixels, prompt_texts, run_jobs
from .watching import watch_jobs

if TYPE_CHECKING:
    from PIL import Image
    from rich.console import Console

    from ..postprocess import MaskOptions
    from ..predictor import Prediction
    from ..prompts import ImagePrompt, Prompt


def segment(
    inputs: InputsArgument,
    output: OutputOption,
    prompt: PromptOption = None,
    negative: NegativeOption = None,
    support: SupportOption = None,
    support_mask: SupportMaskOption = None,
    support_name: SupportNameOption = "support",
    visual_prompt: VisualPromptOption = "crop_blur_highlight",
    mix: MixOption = None,
    templates: TemplatesOption = TemplateSet.plain,
    ensemble: EnsembleOption = False,
    threshold: ThresholdOption = 0.4,
    output_format: FormatOption = None,
    union: UnionOption = False,
    min_area: MinAreaOption = 0,
    dilate: DilateOption = 0.0,
    erode: ErodeOption = 0.0,
    invert: InvertOption = False,
    feather: FeatherOption = 0.0,
    model: ModelOption = DEFAULT_MODEL,
    clip: ClipOption = None,
    extract_layers: LayersOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.fp32,
    backend: BackendOption = Backend.torch,
    batch_size: BatchOption = 4,
    overwrite: OverwriteOption = False,
    max_pixels: MaxPixelsOption = None,
    watch: WatchOption = False,
    settle: SettleOption = 1.0,
    debug: DebugOption = False,
) -> None:
    """Segment images from text prompts and/or an image prompt: one mask per image and prompt.

    Example: clipseg segment photos/ -p "a cup" -p "something to sit on" -o masks/

    With --watch it keeps running and segments every image that is added to or changed in the folders.
    """
    settings = RunSettings.from_arguments("segment", locals())
    formats = list(dict.fromkeys(output_format or [OutputFormat.mask]))

    def body() -> int:
        texts = prompt_texts(prompt, "--prompt")
        negatives = prompt_texts(negative, "--negative")
        options = mask_options(threshold, min_area, dilate, erode, invert, feather)
        limit_pixels(max_pixels)
        console = stderr_console()
        image_prompt = build_image_prompt(support, support_mask, support_name, visual_prompt)
        prompts, names = combine_prompts(texts, image_prompt, mix)
        entry_names = [" or ".join(names)] if union else names

        def plan(console: Console) -> tuple[list[Job], list[Failure]]:
            jobs, failures = plan_jobs(inputs, output, console)
            plan_segment_outputs(jobs, output, formats, entry_names)
            return jobs, failures

        def write(job: Job, image: Image.Image, prediction: Prediction) -> int:
            redo = overwrite or job.redo
            return _write_segmentation(job, image, prediction, formats, options, union, entry_names, redo)

        prepare_output(output)
        if watch:
            return watch_jobs(
                inputs, output, console, plan=plan, prompts=prompts, negatives=negatives, write=write,
                settings=settings, settle=settle,
            )
        jobs, failures = plan(console)
        return run_jobs(
            jobs, failures, output, console, prompts=prompts, negatives=negatives, write=write, settings=settings
        )

    exit_with(run_command(body, debug=debug))


def mask_options(
    threshold: float, min_area: int, dilate: float, erode: float, invert: bool, feather: float
) -> MaskOptions:
    """The mask options (--threshold ... --feather) as `MaskOptions`; a bad value is a usage error."""
    from ..postprocess import MaskOptions

    try:
        return MaskOptions(
            threshold=threshold, min_area=min_area, dilate=dilate, erode=erode, invert=invert, feather=feather
        )
    except ValueError as error:
        raise CLIError(one_line(error), EXIT_USAGE) from None


def build_image_prompt(
    supports: list[Path] | None, masks: list[Path] | None, name: str, variant: str
) -> ImagePrompt | None:
    """The image prompt of --support/--support-mask, or None; mismatched or unreadable files are usage errors."""
    supports, masks = supports or [], masks or []
    if len(supports) != len(masks):
        raise CLIError(
            f"{len(supports)} --support image(s) but {len(masks)} --support-mask(s): give one mask per support image",
            EXIT_USAGE,
        )
    if not supports:
        return None
    from ..prompts import ImagePrompt

    try:
        return ImagePrompt(supports, masks, variant=variant, name=name)
    except (ValueError, OSError) as error:
        raise CLIError(one_line(error), EXIT_USAGE) from None


def combine_prompts(
    texts: list[str], image_prompt: ImagePrompt | None, mix: float | None
) -> tuple[list[Prompt], list[str]]:
    """The prompts to run and their names: texts, then the image prompt; or with --mix each text mixed with it."""
    if not texts and image_prompt is None:
        raise CLIError(
            "nothing to segment: give a text prompt (-p 'a cup') or --support IMG --support-mask MASK", EXIT_USAGE
        )
    if mix is not None:
        if image_prompt is None or not texts:
            raise CLIError("--mix combines text prompts with an image prompt: give both -p and --support", EXIT_USAGE)
        from ..prompts import MixedPrompt

        return [MixedPrompt(text, image_prompt, mix) for text in texts], texts
    prompts = [*texts, *([image_prompt] if image_prompt is not None else [])]
    return prompts, [*texts, *([image_prompt.name] if image_prompt is not None else [])]


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
