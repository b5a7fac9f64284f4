"""`clipseg segment`: one mask (or soft mask, heatmap, overlay, cutout, RLE) per image and prompt."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .common import DEFAULT_MODEL, EXIT_USAGE, CLIError, one_line, run_command, stderr_console
from .jobs import Job, plan_jobs, plan_segment_outputs, prepare_output
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
    SupportMaskOption,
    SupportNameOption,
    SupportOption,
    TemplateSet,
    TemplatesOption,
    ThresholdOption,
    UnionOption,
    VisualPromptOption,
)
from .runner import RunSettings, exit_with, limit_pixels, prompt_texts, run_jobs
from .thresholds import DEFAULT_THRESHOLD, parse_threshold, resolve_threshold

if TYPE_CHECKING:
    from PIL import Image

    from ..model.interface import SegmentationModel
    from ..postprocess import MaskOptions
    from ..predictor import Prediction
    from ..prompts import ImagePrompt, Prompt
    from ..thresholds import Thresholds


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
    threshold: ThresholdOption = None,
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
    debug: DebugOption = False,
) -> None:
    """Segment images from text prompts and/or an image prompt: one mask per image and prompt.

    Example: clipseg segment photos/ -p "a cup" -p "something to sit on" -o masks/
    """
    settings = RunSettings.from_arguments("segment", locals())
    formats = list(dict.fromkeys(output_format or [OutputFormat.mask]))

    def body() -> int:
        from ..postprocess import MaskOptions

        texts = prompt_texts(prompt, "--prompt")
        negatives = prompt_texts(negative, "--negative")
        given = parse_threshold(threshold, "--threshold")
        try:
            options = MaskOptions(
                threshold=given if isinstance(given, float) else DEFAULT_THRESHOLD,
                min_area=min_area,
                dilate=dilate,
                erode=erode,
                invert=invert,
                feather=feather,
            )
        except ValueError as error:
            raise CLIError(one_line(error), EXIT_USAGE) from None
        limit_pixels(max_pixels)
        console = stderr_console()
        image_prompt = _image_prompt(support, support_mask, support_name, visual_prompt)
        prompts, names = _combine(texts, image_prompt, mix)
        entry_names = [" or ".join(names)] if union else names
        jobs, failures = plan_jobs(inputs, output, console)
        plan_segment_outputs(jobs, output, formats, entry_names)
        prepare_output(output)
        chosen: list[float | Thresholds] = [options.threshold]  # final once the model is loaded

        def on_model(model: SegmentationModel) -> None:
            chosen[0] = resolve_threshold(given, threshold, model, names, console)

        def write(job: Job, image: Image.Image, prediction: Prediction) -> int:
            return _write_segmentation(
                job, image, prediction, formats, options, chosen[0], union, entry_names, overwrite
            )

        return run_jobs(
            jobs,
            failures,
            output,
            console,
            prompts=prompts,
            negatives=negatives,
            write=write,
            settings=settings,
            on_model=on_model,
        )

    exit_with(run_command(body, debug=debug))


def _image_prompt(supports: list[Path] | None, masks: list[Path] | None, name: str, variant: str) -> ImagePrompt | None:
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


def _combine(texts: list[str], image_prompt: ImagePrompt | None, mix: float | None) -> tuple[list[Prompt], list[str]]:
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
    threshold: float | Thresholds,
    union: bool,
    entry_names: list[str],
    overwrite: bool,
) -> int:
    from dataclasses import replace

    import numpy as np

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
    from ..thresholds import per_prompt

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
        if union and not isinstance(threshold, float):
            # Per-prompt thresholds: the union of the prompts' masks, then the same clean-up (a 0/1 map
            # thresholded at 0.5 is that union).
            entry_options = replace(options, threshold=0.5)
            thresholded = prediction.union(threshold).numpy().astype(np.float32)
            recorded: float | dict[str, float] = dict(zip(prediction.names, per_prompt(threshold, prediction.names)))
        else:
            (value,) = per_prompt(threshold, [prediction.names[index]]) if not union else (threshold,)
            entry_options, thresholded, recorded = replace(options, threshold=value), probabilities, value
        binary = entry_options.binary(thresholded)
        alpha = entry_options.apply(thresholded) if options.feather > 0 else binary
        if want_rle:
            annotations.append(rle_annotation(binary, probabilities, prompt=name, threshold=recorded))
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
