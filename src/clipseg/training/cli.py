"""`clipseg train CONFIG.yaml [--set key=value ...] [--resume RUN]`; torch is imported only when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli.common import (
    EXIT_FAILURES,
    EXIT_USAGE,
    CLIError,
    print_line,
    run_command,
    stderr_console,
)


def train(
    config: Annotated[
        Path | None, typer.Argument(help="Training config (YAML, e.g. configs/train/rd64-pc-plus.yaml); optional with --resume.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value, e.g. --set optim.lr=3e-4 --set data.root=/data/phrasecut."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue exactly from a checkpoint directory or a run directory (its newest checkpoint).")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Train or fine-tune the CLIPSeg decoder on a frozen CLIP.

    Writes config.yaml, metrics.jsonl, train.csv, validation.csv, checkpoints/step-*/ and, at the end, model/
    (load it with clipseg.load_model) to run.output_dir (default runs/NAME). Several GPUs or nodes:
    torchrun --nproc_per_node 4 --no-python clipseg train CONFIG.yaml.
    """

    def body() -> None:
        import logging

        from rich.logging import RichHandler

        from ..checkpoints.errors import CheckpointError
        from .config import load_config
        from .data import BadSampleError
        from .trainer import NonFiniteLossError, Trainer

        if config is None and resume is None:
            raise CLIError("give a training config (CONFIG.yaml) or --resume RUN", EXIT_USAGE)
        settings = load_config(config) if config is not None else None
        # Progress messages (checkpoints, validation) go to stderr for as long as the command runs.
        package_logger = logging.getLogger("clipseg")
        handler = RichHandler(console=stderr_console(), show_path=False, markup=False)
        package_logger.addHandler(handler)
        previous_level = package_logger.level
        package_logger.setLevel(logging.INFO)
        try:
            if resume is not None:
                trainer = Trainer.resume(resume, config=settings, overrides=overrides or ())
            else:
                trainer = Trainer(settings.with_overrides(overrides or ()))
            result = trainer.train()
        except (NonFiniteLossError, BadSampleError, CheckpointError) as error:
            raise CLIError(str(error), EXIT_FAILURES) from None
        finally:
            package_logger.removeHandler(handler)
            package_logger.setLevel(previous_level)
            _leave_process_group()
        if result.model_dir is None:  # not rank 0
            return
        if result.already_complete:
            print_line(
                stderr_console(),
                f"already complete: the run reached its last step ({result.step}) before; model in {result.model_dir}",
            )
        else:
            print_line(stderr_console(), f"done: step {result.step}, loss {result.loss:.4f}, model in {result.model_dir}")

    run_command(body, debug=debug)


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
