"""The progress bar of every long-running command (segmenting, evaluating, training), in one layout."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    Task,
    TimeRemainingColumn,
)
from rich.text import Text


def progress_bar(*fields: ProgressColumn, console: Console | None = None, disable: bool = False) -> Progress:
    """A rich `Progress`: each task's description (plain text: names may hold brackets), a bar, done/total, then
    `fields`, elapsed and remaining time. It draws on `console`, by default a new one on stderr."""
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        *fields,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console if console is not None else Console(stderr=True),
        disable=disable,
    )


class RateColumn(ProgressColumn):
    """Items per second of a task, e.g. "24.3 frames/s" (rich's own speed columns count bytes)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")
