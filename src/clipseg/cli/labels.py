"""`clipseg labels`: one label map per image, each pixel the most probable prompt or background."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .common import DEFAULT_MODEL, EXIT_USAGE, CLIError, run_command, stderr_console
from .jobs import LEGEND_NAME, Job, plan_jobs, plan_label_outputs, prepare_output
from .options import (
    Backend,
    BackendOption,
    BackgroundThresholdOption,
    BatchOption,
    ClipOption,
    DebugOption,
    DeviceOption,
    EnsembleOption,
    InputsArgument,
    LayersOption,
    MaxPixelsOption,
    ModelOption,
    NegativeOption,
    OutputOption,
    OverwriteOption,
    Precision,
    PrecisionOption,
    PromptOption,
    TemplateSet,
    TemplatesOption,
)
from .resolution import RefineOption, TileScalesOption, TilesOption, resolution_settings
from .runner import RunSettings, exit_with, limit_pixels, prompt_texts, run_jobs
from .thresholds import model_thresholds, parse_threshold, resolve_threshold

if TYPE_CHECKING:
    from PIL import Image

    from ..predictor import Prediction
    from ..thresholds import Thresholds


def labels(
    inputs: InputsArgument,
    output: OutputOption,
    prompt: PromptOption = None,
    negative: NegativeOption = None,
    background_threshold: BackgroundThresholdOption = None,
    templates: TemplatesOption = TemplateSet.plain,
    ensemble: EnsembleOption = False,
    tiles: TilesOption = False,
    tile_scales: TileScalesOption = None,
    refine: RefineOption = None,
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
    settings = RunSettings.from_arguments("labels", locals())

    def body() -> int:
        from ..outputs import label_colours, save_json

        texts = prompt_texts(prompt, "--prompt")
        if not texts:
            raise CLIError("give the classes to label with -p, e.g. -p cat -p dog", EXIT_USAGE)
        if len(texts) > 255:
            raise CLIError(f"{len(texts)} prompts: a label map holds at most 255", EXIT_USAGE)
        negatives = prompt_texts(negative, "--negative")
        given = parse_threshold(background_threshold, "--background-threshold")
        limit_pixels(max_pixels)
        run_settings = replace(settings, resolution=resolution_settings(tiles, tile_scales, refine))
        console = stderr_console()
        jobs, failures = plan_jobs(inputs, output, console)
        plan_label_outputs(jobs, output)
        colours = label_colours(len(texts))
        # Settled before the run (with --engine ray the model loads in the workers): the one given, else the model
        # directory's calibrated thresholds.json.
        chosen = resolve_threshold(given, background_threshold, model_thresholds(settings.model), texts, console)
        run_settings = replace(run_settings, resolution=replace(run_settings.resolution, refine_threshold=chosen))
        legend = {
            "background_threshold": chosen if isinstance(chosen, float) else {t: chosen.for_prompt(t) for t in texts},
            "labels": [
                {"value": value, "name": name, "colour": list(colours[value])}
                for value, name in enumerate(["background", *texts])
            ],
        }

        def write(job: Job, image: Image.Image, prediction: Prediction) -> tuple[int, list[dict]]:
            return _write_labels(job, image, prediction, chosen, overwrite), []

        prepare_output(output)
        save_json(legend, output / LEGEND_NAME)  # rewritten each run: cheap, and always matches the prompts
        return run_jobs(
            jobs, failures, output, console, prompts=texts, negatives=negatives, write=write, settings=run_settings
        )

    exit_with(run_command(body, debug=debug))


def _write_labels(
    job: Job, image: Image.Image, prediction: Prediction, background_threshold: float | Thresholds, overwrite: bool
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
