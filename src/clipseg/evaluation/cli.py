"""`clipseg eval CONFIG.yaml`: run one paper table's protocol and write its report; torch loads only when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cli.common import EXIT_USAGE, CLIError, print_line, run_command, stderr_console


def eval_(
    config: Annotated[
        Path, typer.Argument(help="Evaluation config, one per paper table (e.g. configs/eval/table5_pascal5i_oneshot.yaml).")
    ],
    model: Annotated[
        Optional[list[str]],
        typer.Option(
            "--model", help="Evaluate these weights instead of the config's models: SOURCE or NAME=SOURCE (repeatable)."
        ),
    ] = None,
    root: Annotated[
        Optional[str], typer.Option(help="Dataset location, replacing dataset.root (or dataset.annotations for LVIS).")
    ] = None,
    output: Annotated[Optional[Path], typer.Option(help="Directory for report.md, results.json and plots.")] = None,
    limit: Annotated[
        Optional[int],
        typer.Option(help="Only the first N samples per task (a quick check; not comparable to the paper)."),
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1, mps ...")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass.")] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore cached per-sample results and start over.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Evaluate models with a benchmark protocol of the paper (Tables 2-9) and write a report.

    Interrupted runs continue where they stopped (per-sample results are cached under OUTPUT/cache).
    """

    def body() -> None:
        from .config import load_config
        from .protocols import PROTOCOLS
        from .settings import ModelSpec
        from .runner import run_evaluation

        settings = load_config(config)
        changes: dict = {}
        if model:
            specs = []
            for k, entry in enumerate(model):
                name, separator, source = entry.partition("=")
                specs.append(
                    ModelSpec(name=name if separator else f"model {k + 1}", source=source if separator else entry)
                )
            changes["models"] = tuple(specs)
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
        print_line(
            stderr_console(), f"wrote {result.files.markdown}, {result.files.json} and {len(result.files.plots)} plots"
        )
        if result.failed:
            print_line(
                stderr_console(),
                f"warning: {len(result.failed)} samples could not be loaded and are left out of the scores; "
                f"they are listed in {result.files.markdown}",
            )

    run_command(body, debug=debug)
