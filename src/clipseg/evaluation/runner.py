"""Run an evaluation config end to end: every model through the protocol, then the reports."""

from __future__ import annotations

import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..progress import progress_bar
from .settings import EvalConfig
from .engine import Row, Runtime
from .protocols import make_protocol
from .own_data_report import write_own_data_report
from .reports import ReportFiles, write_report


@dataclass
class EvaluationResult:
    """The rows of the table and the files written."""

    rows: list[Row]
    files: ReportFiles
    failed: dict[str, str]  # samples left out: key -> reason (also listed in the report)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_sources(config: EvalConfig) -> None:
    """Fail before any work if a model's weights are neither a local path nor a hub id."""
    from ..checkpoints.pretrained import HUB_MODELS

    for spec in config.models:
        for source in [spec.source, *spec.sources.values()]:
            if source is None or Path(source).exists() or source in HUB_MODELS or _HUB_ID.fullmatch(source):
                continue
            raise FileNotFoundError(f"model {spec.name!r}: weights not found at {source}")


def run_evaluation(config: EvalConfig, *, resume: bool = True, progress: bool | None = None) -> EvaluationResult:
    """Evaluate every model of `config` and write report.md, results.json and plots to ``config.output``.

    Args:
        resume: reuse (and extend) the cached per-sample results of earlier runs with the same weights and settings.
        progress: show progress bars (default: when stderr is a terminal).
    """
    protocol = make_protocol(config)
    check_sources(config)
    show = sys.stderr.isatty() if progress is None else progress
    torch.manual_seed(config.seed)
    rows: list[Row] = []
    bars = progress_bar(disable=not show)
    with bars if show else nullcontext():
        runtime = Runtime(config, progress=bars if show else None, resume=resume)
        for spec in config.models:
            rows += protocol.rows(spec, runtime)
    # Own data has no paper table: its report puts the models side by side overall and per prompt.
    if config.protocol == "own_data":
        files = write_own_data_report(config, rows)
    else:
        files = write_report(config, rows, failed=runtime.failed)
    return EvaluationResult(rows, files, runtime.failed)
