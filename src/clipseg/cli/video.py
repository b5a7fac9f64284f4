"""`clipseg video`: per-frame masks of videos, temporally smoothed, as PNG frames, mask videos, overlays or RLE."""

from __future__ import annotations

from ..messages import shorten
from ..video import DEFAULT_SMOOTH
from .common import (
    DEFAULT_MODEL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CLIError,
    one_line,
    print_line,
    run_command,
    stderr_console,
)
from .jobs import plan_jobs, prepare_output
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
    EveryOption,
    FeatherOption,
    InvertOption,
    LayersOption,
    MinAreaOption,
    MixOption,
    ModelOption,
    NegativeOption,
    OutputOption,
    OverwriteOption,
    Precision,
    PrecisionOption,
    PromptOption,
    SmoothOption,
    SupportMaskOption,
    SupportNameOption,
    SupportOption,
    TemplateSet,
    TemplatesOption,
    ThresholdOption,
    UnionOption,
    VideoFormat,
    VideoFormatOption,
    VideosArgument,
    VisualPromptOption,
)
from .resolution import RefineOption, TileScalesOption, TilesOption, resolution_settings
from .runner import (
    RunSettings,
    Summary,
    exit_with,
    finish,
    is_storage_full,
    load_predictor,
    output_lock,
    print_summary,
    prompt_texts,
    report_failure,
    storage_full_error,
)
from .segment import build_image_prompt, combine_prompts, mask_options
from .thresholds import DEFAULT_THRESHOLD, parse_threshold


def video(
    inputs: VideosArgument,
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
    output_format: VideoFormatOption = None,
    union: UnionOption = False,
    min_area: MinAreaOption = 0,
    dilate: DilateOption = 0.0,
    erode: ErodeOption = 0.0,
    invert: InvertOption = False,
    feather: FeatherOption = 0.0,
    tiles: TilesOption = False,
    tile_scales: TileScalesOption = None,
    refine: RefineOption = None,
    smooth: SmoothOption = DEFAULT_SMOOTH,
    every: EveryOption = 1,
    model: ModelOption = DEFAULT_MODEL,
    clip: ClipOption = None,
    extract_layers: LayersOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.fp32,
    backend: BackendOption = Backend.torch,
    batch_size: BatchOption = 4,
    overwrite: OverwriteOption = False,
    debug: DebugOption = False,
) -> None:
    """Segment every frame of videos: masks that hold still over time (smoothing, reset at scene cuts).

    Writes OUTPUT/<video>/<prompt>/000000.png ... (frames), OUTPUT/<video>/<prompt>.mkv (video),
    OUTPUT/<video>/overlay.mp4 (overlay) and OUTPUT/<video>/rle.jsonl (rle). A video's outputs appear when it is
    finished; videos whose outputs exist are skipped.

    Example: clipseg video clip.mp4 -p "a dog" -f frames -f overlay -o masks/
    """
    settings = RunSettings.from_arguments("video", locals())
    formats = [fmt.value for fmt in dict.fromkeys(output_format or [VideoFormat.frames])]

    def body() -> int:
        from ..batch.work import failure_reason
        from ..outputs import unique_names
        from ..progress import RateColumn, progress_bar
        from ..video.io import VIDEO_SUFFIXES, require_av

        try:
            require_av()
        except ImportError as error:
            raise CLIError(one_line(error)) from None
        texts = prompt_texts(prompt, "--prompt")
        negatives = prompt_texts(negative, "--negative")
        given = parse_threshold(threshold, "--threshold")
        if given is not None and not isinstance(given, float):
            raise CLIError("--threshold of clipseg video takes a number in [0, 1]", EXIT_USAGE)
        options = mask_options(DEFAULT_THRESHOLD if given is None else given, min_area, dilate, erode, invert, feather)
        resolution = resolution_settings(tiles, tile_scales, refine)
        # Refinement pivots on the threshold the masks are cut at, as in `clipseg segment`.
        refine_options = None if resolution.refine is None else {"center": options.threshold}
        console = stderr_console()
        image_prompt = build_image_prompt(support, support_mask, support_name, visual_prompt)
        prompts, names = combine_prompts(texts, image_prompt, mix)
        entry_names = [" or ".join(names)] if union else names
        jobs, failures = plan_jobs(inputs, output, console, suffixes=VIDEO_SUFFIXES, kind="video")
        from ..video.writers import output_paths

        slugs = unique_names(entry_names, keep_dots=False)
        for job in jobs:
            job.files = output_paths(output / job.stem, slugs, formats)
        from ..batch.store import OutputStore

        store = OutputStore.open(output)  # a local folder: `output` is a Path
        prepare_output(store)
        with output_lock(store):  # one run per output folder, as `clipseg segment`
            summary = Summary(found=len(jobs) + len(failures), failures=list(failures))
            for source, reason in failures:
                print_line(console, f"error: {source}: {reason}")
            if not jobs and not failures:
                raise CLIError("no videos to segment", EXIT_USAGE)
            todo = [job for job in jobs if overwrite or not job.done()]
            summary.skipped = len(jobs) - len(todo)
            if not todo:
                return finish(summary, output, "video", inputs="videos")
            from ..video import VideoOutputs, probe, segment_video

            predictor = load_predictor(settings, console)
            try:
                with progress_bar(RateColumn("frames"), console=console, disable=not console.is_terminal) as progress:
                    for position, job in enumerate(todo):
                        try:
                            info = probe(job.source)
                            task = progress.add_task(shorten(job.source.name, 30), total=info.expected_frames)
                            frames = segment_video(
                                job.source, prompts, model=predictor, negative=negatives, templates=templates.value,
                                ensemble=ensemble, smooth=smooth, every=every, batch_size=batch_size,
                                tiles=resolution.tiles, refine=resolution.refine, refine_options=refine_options,
                            )
                            with VideoOutputs(job.files, entry_names, info, options=options, union=union,
                                              overwrite=overwrite, source=str(job.source)) as outputs:
                                for count, frame in enumerate(frames, start=1):
                                    outputs.write(frame)
                                    progress.update(task, completed=count)
                            progress.update(task, total=count)  # the container's count was an estimate
                            summary.files_written += outputs.files_written
                            summary.segmented += 1
                        except Exception as error:  # every bad video is reported as one line and the run goes on
                            if is_storage_full(error):  # ... unless no further output would fit either
                                left = f", {len(todo) - position} videos not done"
                                reason = failure_reason(str(job.source), error)
                                raise storage_full_error(reason, summary, output, "video", left=left,
                                                         inputs="videos") from None
                            report_failure(summary, console, job.source, error, debug)
            except KeyboardInterrupt:
                print_line(console, "interrupted: finished videos are kept; run the same command again to do the rest")
                print_summary(summary, output, "video", inputs="videos")
                exit_with(EXIT_INTERRUPTED)
            return finish(summary, output, "video", inputs="videos")

    exit_with(run_command(body, debug=debug))


__all__ = ["video"]
