"""`clipseg eval CONFIG.yaml`: run one paper table's protocol and write its report; `clipseg eval --data DATA`:
evaluate models on own labelled data (and write calibrated thresholds). torch loads only when it runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cli.common import EXIT_USAGE, CLIError, print_line, run_command, stderr_console
from ..cli.options import TemplateSet


class ThresholdCriterion(str, Enum):
    """How --write-thresholds chooses (`clipseg.calibration`)."""

    fgiou = "fgiou"
    precision = "precision"
    recall = "recall"


def eval_(
    config: Annotated[
        Optional[Path],
        typer.Argument(
            help="Evaluation config, one per paper table (e.g. configs/eval/table5_pascal5i_oneshot.yaml); "
            "or none with --data.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(
            help="Own labelled data instead of a config: a folder (images/ + masks/NAME__PROMPT.png), a CSV "
            "(image,mask,prompt), a COCO JSON (category names as prompts) or a PhraseCut-format folder.",
            rich_help_panel="Own data",
        ),
    ] = None,
    model: Annotated[
        Optional[list[str]],
        typer.Option(
            "--model", help="Evaluate these weights instead of the config's models: SOURCE or NAME=SOURCE (repeatable)."
        ),
    ] = None,
    root: Annotated[
        Optional[str], typer.Option(help="Dataset location, replacing dataset.root (or dataset.annotations for LVIS).")
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Directory for report.md, results.json and plots.")
    ] = None,
    support_from_data: Annotated[
        bool,
        typer.Option(
            "--support-from-data",
            help="Image prompts: each pair's support is another image's mask of the same prompt (seeded draw).",
            rich_help_panel="Own data",
        ),
    ] = False,
    templates: Annotated[
        TemplateSet, typer.Option(help="Text prompt templates, as `clipseg segment` applies them.", rich_help_panel="Own data")
    ] = TemplateSet.plain,
    ensemble: Annotated[
        bool, typer.Option("--ensemble", help="Average each prompt over all templates of the set.", rich_help_panel="Own data")
    ] = False,
    split: Annotated[
        Optional[str], typer.Option(help="PhraseCut split of a PhraseCut-format folder.", rich_help_panel="Own data")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the support draw.", rich_help_panel="Own data")] = 0,
    write_thresholds: Annotated[
        Optional[Path],
        typer.Option(
            help="Write the thresholds chosen on this data (overall and per prompt) for the first --model to this "
            "JSON file, for `clipseg segment --threshold FILE` or a model directory.",
            rich_help_panel="Own data",
        ),
    ] = None,
    threshold_criterion: Annotated[
        ThresholdCriterion,
        typer.Option(
            help="fgiou: best IoU_FG; precision: lowest threshold reaching --threshold-target precision; recall: "
            "highest threshold reaching --threshold-target recall.",
            rich_help_panel="Own data",
        ),
    ] = ThresholdCriterion.fgiou,
    threshold_target: Annotated[
        Optional[float],
        typer.Option(min=0.0, max=1.0, help="Precision or recall to reach (e.g. 0.9).", rich_help_panel="Own data"),
    ] = None,
    limit: Annotated[
        Optional[int],
        typer.Option(help="Only the first N samples per task (a quick check; not comparable to the paper)."),
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1, mps ...")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass.")] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore cached per-sample results and start over.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Evaluate models with a benchmark protocol of the paper (Tables 2-9), or on your own labelled images
    (--data), and write a report.

    Interrupted runs continue where they stopped (per-sample results are cached under OUTPUT/cache).

    Example: clipseg eval --data my-data/ --model released=CIDAS/clipseg-rd64-refined --model mine=runs/x/model
    --write-thresholds thresholds.json -o runs/eval/mine
    """

    def body() -> None:
        from .config import load_config
        from .protocols import PROTOCOLS
        from .runner import run_evaluation

        if (config is None) == (data is None):
            raise CLIError("give an evaluation config or --data DATA (own labelled data), not both", EXIT_USAGE)
        own = _own_data_only(
            support_from_data=support_from_data,
            templates=templates != TemplateSet.plain,
            ensemble=ensemble,
            split=split,
            seed=seed != 0,
            write_thresholds=write_thresholds,
            threshold_criterion=threshold_criterion != ThresholdCriterion.fgiou,
            threshold_target=threshold_target,
        )
        if data is None and own:
            raise CLIError(f"{own[0]} applies to --data evaluations only", EXIT_USAGE)
        if (threshold_criterion == ThresholdCriterion.fgiou) != (threshold_target is None):
            raise CLIError("--threshold-target goes with --threshold-criterion precision or recall", EXIT_USAGE)
        if data is not None:
            settings = own_data_config(
                data, model, split=split, support_from_data=support_from_data, templates=templates.value,
                ensemble=ensemble, seed=seed,
            )
        else:
            settings = load_config(config)
        changes: dict = {}
        if model and data is None:
            changes["models"] = model_specs(model, unnamed="number")
        if root is not None:
            key = PROTOCOLS[settings.protocol].required_dataset_keys[0]  # the dataset's location
            changes["dataset"] = {**settings.dataset, key: root}
        if output is not None:
            changes["output"] = str(output)
        if limit is not None:
            if limit < 1:
                raise CLIError("--limit must be positive", EXIT_USAGE)
            changes["limit"] = limit
        if device is not None:
            changes["device"] = device
        if batch_size is not None:
            if batch_size < 1:
                raise CLIError("--batch-size must be positive", EXIT_USAGE)
            changes["batch_size"] = batch_size
        result = run_evaluation(settings.replace(**changes), resume=not fresh)
        typer.echo(result.files.markdown.read_text(encoding="utf-8"))
        console = stderr_console()
        print_line(console, f"wrote {result.files.markdown}, {result.files.json} and {len(result.files.plots)} plots")
        if result.failed:
            print_line(
                console,
                f"warning: {len(result.failed)} samples could not be loaded and are left out of the scores; "
                f"they are listed in {result.files.markdown}",
            )
        if write_thresholds is not None:
            _write_thresholds(result.rows, write_thresholds, threshold_criterion.value, threshold_target, console)

    run_command(body, debug=debug)


def _own_data_only(**given: object) -> list[str]:
    """The --data-only options given (their names as options)."""
    return ["--" + name.replace("_", "-") for name, value in given.items() if value not in (None, False)]


def model_specs(entries: list[str], *, unnamed: str) -> tuple:
    """--model SOURCE or NAME=SOURCE entries; an unnamed one is called "model N" or (`unnamed` "source") its
    source."""
    from .settings import ModelSpec

    specs = []
    for k, entry in enumerate(entries):
        name, separator, source = entry.partition("=")
        if not separator:
            name, source = (entry if unnamed == "source" else f"model {k + 1}"), entry
        if not name or not source:
            raise CLIError(f"--model {entry!r}: expected SOURCE or NAME=SOURCE", EXIT_USAGE)
        specs.append(ModelSpec(name=name, source=source))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise CLIError(f"--model names must be unique, got {names}", EXIT_USAGE)
    return tuple(specs)


def own_data_config(
    data: Path,
    models: list[str] | None,
    *,
    split: str | None,
    support_from_data: bool,
    templates: str,
    ensemble: bool,
    seed: int,
):
    """The `EvalConfig` of `clipseg eval --data` (protocol own_data; default model: the released rd64-refined)."""
    from ..cli.common import DEFAULT_MODEL
    from .settings import EvalConfig

    if not data.exists():
        raise CLIError(f"--data: not found: {data}", EXIT_USAGE)
    options = {"prompts": "visual" if support_from_data else "text", "templates": templates, "ensemble": ensemble,
               "seed": seed}
    return EvalConfig(
        table="own data",
        protocol="own_data",
        models=model_specs(models or [DEFAULT_MODEL], unnamed="source"),
        dataset={"data": str(data), **({"split": split} if split else {})},
        options=options,
        output="runs/eval/own-data",
        workers=0,
    )


def _write_thresholds(rows: list, path: Path, criterion: str, target: float | None, console) -> None:
    """The first model's thresholds chosen on the evaluated data, written to `path`."""
    from ..calibration import choose_thresholds

    row = rows[0]
    prompts = {prompt: entry["statistics"] for prompt, entry in row.details["prompts"].items()}
    thresholds = choose_thresholds(
        row.details["statistics"], prompts, criterion=criterion, target=target, model=row.details["source"]
    )
    thresholds.save(path)
    note = f" (the first of {len(rows)} models)" if len(rows) > 1 else ""
    how = "best IoU_FG" if criterion == "fgiou" else f"{criterion} >= {target:g}"
    print_line(
        console,
        f"wrote {path}: thresholds of {row.name!r}{note} by {how}: overall {thresholds.overall:.2f}, "
        f"{len(thresholds.prompts)} prompt(s) of their own",
    )
