"""`clipseg segment`: one mask (or soft mask, heatmap, overlay, cutout, RLE) per image and prompt."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .common import DEFAULT_MODEL, EXIT_USAGE, CLIError, one_line, print_line, run_command, stderr_console
from .jobs import Failure, Job, plan_jobs, plan_segment_outputs, prepare_output
from .options import (
    Backend,
    BackendOption,
    BatchOption,
    ClipOption,
    DebugOption,
    DeviceOption,
    DilateOption,
    Engine,
    EngineOption,
    EnsembleOption,
    ErodeOption,
    FeatherOption,
    FormatOption,
    InvertOption,
    LayersOption,
    ManifestInOption,
    ManifestOption,
    MaxPixelsOption,
    MinAreaOption,
    MixOption,
    ModelOption,
    NegativeOption,
    OptionalInputsArgument,
    OutputFormat,
    OutputTargetOption,
    OverwriteOption,
    Precision,
    PrecisionOption,
    PromptOption,
    RayAddressOption,
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
    WorkersOption,
)
from .resolution import (
    AlphaMattingOption,
    MattingBackgroundOption,
    MattingErodeOption,
    MattingForegroundOption,
    RefineOption,
    TileScalesOption,
    TilesOption,
    resolution_settings,
)
from .runner import EngineSettings, RunSettings, exit_with, limit_pixels, output_lock, prompt_texts, run_jobs
from .thresholds import DEFAULT_THRESHOLD, model_thresholds, parse_threshold, resolve_threshold
from .watching import watch_jobs

if TYPE_CHECKING:
    from PIL import Image
    from rich.console import Console

    from ..batch.manifest import ManifestWriter
    from ..batch.store import OutputStore
    from ..postprocess import MaskOptions
    from ..predictor import Prediction
    from ..prompts import ImagePrompt, Prompt
    from ..thresholds import Thresholds


def segment(
    output: OutputTargetOption,
    inputs: OptionalInputsArgument = None,
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
    tiles: TilesOption = False,
    tile_scales: TileScalesOption = None,
    refine: RefineOption = None,
    alpha_matting: AlphaMattingOption = False,
    alpha_matting_foreground: MattingForegroundOption = None,
    alpha_matting_background: MattingBackgroundOption = None,
    alpha_matting_erode: MattingErodeOption = None,
    model: ModelOption = DEFAULT_MODEL,
    clip: ClipOption = None,
    extract_layers: LayersOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.fp32,
    backend: BackendOption = Backend.torch,
    batch_size: BatchOption = 4,
    overwrite: OverwriteOption = False,
    max_pixels: MaxPixelsOption = None,
    manifest_in: ManifestInOption = None,
    manifest: ManifestOption = None,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
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
        given = parse_threshold(threshold, "--threshold")
        options = mask_options(
            given if isinstance(given, float) else DEFAULT_THRESHOLD, min_area, dilate, erode, invert, feather
        )
        limit_pixels(max_pixels)
        run_engine = _engine(engine, ray_address, workers)
        store = _output_store(output)
        console = stderr_console()
        matting = None
        if alpha_matting:
            trimap = {
                "foreground": alpha_matting_foreground,
                "background": alpha_matting_background,
                "erode": alpha_matting_erode,
            }
            matting = {key: value for key, value in trimap.items() if value is not None}
            if OutputFormat.cutout not in formats:
                print_line(console, "note: --alpha-matting only changes cut-outs: add -f cutout")
        run_settings = replace(settings, resolution=resolution_settings(tiles, tile_scales, refine, matting))
        image_prompt = build_image_prompt(support, support_mask, support_name, visual_prompt)
        prompts, names = combine_prompts(texts, image_prompt, mix)
        entry_names = [" or ".join(names)] if union else names
        listed = _listed_sources(manifest_in)
        if watch and (engine != Engine.local or manifest is not None or listed):
            raise CLIError("--watch runs on the local engine and takes folders: drop --engine ray, --manifest and "
                           "--manifest-in", EXIT_USAGE)
        if watch and store.local is None:
            raise CLIError(f"--watch writes to a local folder, not to {store.name}", EXIT_USAGE)
        rows = None if manifest is None else RowSettings(store, model, formats, entry_names)
        # Settled before the run (with --engine ray the model loads in the workers): the one given, else the model
        # directory's calibrated thresholds.json.
        chosen = resolve_threshold(given, threshold, model_thresholds(model), names, console)
        run_settings = replace(run_settings, resolution=replace(run_settings.resolution, refine_threshold=chosen))

        def plan(console: Console) -> tuple[list[Job], list[Failure]]:
            jobs, failures = plan_jobs(inputs or [], store.local, console, listed=listed)
            plan_segment_outputs(jobs, store.root, formats, entry_names)
            return jobs, failures

        def write(job: Job, image: Image.Image, prediction: Prediction) -> tuple[int, list[dict]]:
            redo = overwrite or job.redo
            return _write_segmentation(
                store, job, image, prediction, formats, options, chosen, union, entry_names, redo, rows, matting
            )

        prepare_output(store)
        if watch:
            with output_lock(store):  # one run per output folder, as without --watch
                return watch_jobs(
                    inputs or [], store.root, console, plan=plan, prompts=prompts, negatives=negatives, write=write,
                    settings=run_settings, settle=settle,
                )
        jobs, failures = plan(console)
        return run_jobs(
            jobs,
            failures,
            store,
            console,
            prompts=prompts,
            negatives=negatives,
            write=write,
            settings=run_settings,
            engine=run_engine,
            manifest=_manifest_writer(
                manifest, entry_names, model, chosen if isinstance(chosen, float) else chosen.overall, overwrite
            ),
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
    store: OutputStore,
    job: Job,
    image: Image.Image,
    prediction: Prediction,
    formats: list[OutputFormat],
    options: MaskOptions,
    threshold: float | Thresholds,
    union: bool,
    entry_names: list[str],
    overwrite: bool,
    rows: RowSettings | None = None,
    matting: dict | None = None,
) -> tuple[int, list[dict]]:
    """Write the job's missing files (all with `overwrite`) to the store; returns (files written, manifest rows:
    with `rows`, one per prompt whether or not its files were written now)."""
    import numpy as np

    from ..outputs import (
        cutout,
        encoded_image,
        heatmap_overlay,
        json_bytes,
        label_colours,
        mask_image,
        mask_overlay,
        rle_annotation,
    )
    from ..thresholds import per_prompt

    per_entry = [fmt for fmt in formats if fmt != OutputFormat.rle]
    written = 0
    annotations = []
    colours = label_colours(len(entry_names))
    rle_path = job.files.get((OutputFormat.rle.value, None))
    want_rle = rle_path is not None and (overwrite or not store.exists(rle_path))
    manifest_rows = []
    for index, name in enumerate(entry_names):
        planned = [(fmt, job.files[(fmt.value, index)]) for fmt in per_entry]
        todo = [(fmt, path) for fmt, path in planned if overwrite or not store.exists(path)]
        if not todo and not want_rle and rows is None:
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
        if want_rle or rows is not None:
            annotation = rle_annotation(binary, probabilities, prompt=name, threshold=recorded)
            annotations.append(annotation)
            if rows is not None:
                # The manifest's threshold column is a number: a union under per-prompt thresholds records none.
                number = recorded if isinstance(recorded, float) else None
                manifest_rows.append(rows.row(job, index, {**annotation, "threshold": number}, image))
        for fmt, path in todo:
            if fmt == OutputFormat.mask:
                picture = mask_image(alpha)
            elif fmt == OutputFormat.soft:
                picture = mask_image(1.0 - probabilities if options.invert else probabilities)
            elif fmt == OutputFormat.heatmap:
                picture = heatmap_overlay(image, probabilities)
            elif fmt == OutputFormat.overlay:
                picture = mask_overlay(image, alpha, colour=colours[index + 1])
            elif fmt == OutputFormat.cutout and matting is not None:
                from ..refine import alpha_matte

                matte = alpha_matte(probabilities, image, **matting)
                picture = cutout(image, 1.0 - matte if options.invert else matte)
            else:
                picture = cutout(image, alpha)
            store.write(path, encoded_image(picture, path))
            written += 1
    if want_rle:
        record = {"image": str(job.source), "height": image.height, "width": image.width, "annotations": annotations}
        store.write(rle_path, json_bytes(record))
        written += 1
    return written, manifest_rows


@dataclass(frozen=True)
class RowSettings:
    """What a manifest row of `clipseg segment` needs besides the image and its annotation."""

    store: OutputStore
    model: str
    formats: list[OutputFormat]
    entry_names: list[str]

    def row(self, job: Job, index: int, annotation: dict, image: Image.Image) -> dict:
        from ..batch.manifest import success_row

        # The file named in the `mask` column: the mask if written, else the first per-prompt file, else the RLE.
        kinds = sorted(self.formats, key=lambda fmt: (fmt != OutputFormat.mask, fmt == OutputFormat.rle))
        kind = kinds[0]
        path = job.files[(kind.value, None if kind == OutputFormat.rle else index)]
        mask = self.store.relative(path)
        name = self.entry_names[index]
        return success_row(str(job.source), name, mask, annotation, image.width, image.height, model=self.model)


def _engine(engine: Engine, address: str | None, workers: int | None) -> EngineSettings:
    if engine == Engine.ray:
        try:
            with warnings.catch_warnings():  # Ray's own deprecation notices are not the user's business
                warnings.simplefilter("ignore", DeprecationWarning)
                import ray.data  # noqa: F401 (checked here so that a missing extra is one line, not a traceback)
        except ImportError:
            raise CLIError("--engine ray needs Ray Data: pip install 'clipseg[ray]'") from None
    elif address is not None or workers is not None:
        raise CLIError("--ray-address and --workers apply to --engine ray", EXIT_USAGE)
    return EngineSettings(engine.value, address, workers)


def _output_store(output: str) -> OutputStore:
    """The -o folder: a path or a pyarrow file-system URI (clipseg.batch.store); a bad URI is one line."""
    from ..batch.store import OutputStore, OutputStoreError

    try:
        return OutputStore.open(output)
    except OutputStoreError as error:
        raise CLIError(f"-o {error}", EXIT_USAGE) from None


def _listed_sources(manifest_in: str | None) -> list[str]:
    if manifest_in is None:
        return []
    from ..batch.sources import read_source_list

    try:
        return read_source_list(manifest_in)
    except ImportError:
        raise CLIError("--manifest-in needs pyarrow: pip install 'clipseg[ray]'") from None
    except (ValueError, OSError) as error:
        raise CLIError(f"--manifest-in {one_line(error)}", EXIT_USAGE) from None


def _manifest_writer(
    path: str | None, prompts: list[str], model: str, threshold: float, overwrite: bool
) -> ManifestWriter | None:
    if path is None:
        return None
    try:
        from ..batch.manifest import ManifestWriter
    except ImportError:
        raise CLIError("--manifest needs pyarrow: pip install 'clipseg[ray]'") from None
    from ..batch.store import OutputStoreError, without_credentials

    try:
        return ManifestWriter(path, prompts, model=model, threshold=threshold, resume=not overwrite)
    except OutputStoreError as error:  # names the value already
        raise CLIError(f"--manifest {error}") from None
    except (ValueError, OSError) as error:
        raise CLIError(f"--manifest {without_credentials(path)}: {one_line(error)}") from None
