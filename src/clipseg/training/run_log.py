"""What a training run shows while it goes: the loss window behind each log record, and the progress bar."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


class LossWindow:
    """Loss and throughput since the last log record."""

    def __init__(self, global_batch_size: int) -> None:
        self.global_batch_size = global_batch_size
        self.last_mean = float("nan")
        self._reset()

    def _reset(self) -> None:
        self.losses: list[float] = []
        self.started = time.perf_counter()
        self._elapsed_before = 0.0  # time the window ran before the checkpoint it was restored from

    def restart_clock(self) -> None:
        """Count time from now (a window restored from a checkpoint keeps the time it had run then)."""
        self.started = time.perf_counter()

    def state(self) -> dict[str, Any]:
        """The window as primitives for a checkpoint: after resuming, the first record averages the same steps
        as an uninterrupted run's (and its throughput leaves out the time the run was stopped)."""
        return {"losses": list(self.losses), "elapsed": self._elapsed(), "last_mean": self.last_mean}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.losses = [float(loss) for loss in state["losses"]]
        self._elapsed_before = float(state["elapsed"])
        self.last_mean = float(state["last_mean"])

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self.started

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    def throughput(self) -> float:
        elapsed = self._elapsed()
        return len(self.losses) * self.global_batch_size / elapsed if elapsed > 0 else 0.0

    def flush(self, lr: float) -> dict[str, float]:
        self.last_mean = sum(self.losses) / len(self.losses)
        record = {"loss": self.last_mean, "lr": lr, "samples_per_second": self.throughput()}
        self._reset()
        return record


class TrainingProgress:
    """A rich progress bar with loss and throughput (a no-op when disabled)."""

    def __init__(self, total: int, completed: int, *, enabled: bool) -> None:
        self._progress = None
        if not enabled:
            return
        from rich.progress import TextColumn

        from ..progress import progress_bar

        self._progress = progress_bar(
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[throughput]:.1f} samples/s")
        )
        self._task = self._progress.add_task("training", total=total, completed=completed, loss=float("nan"), throughput=0.0)
        self._progress.start()

    def update(self, step: int, loss: float, throughput: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=loss, throughput=throughput)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
