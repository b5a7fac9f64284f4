"""Metric records of a run: ``metrics.jsonl`` (everything), one CSV per kind, optional TensorBoard events."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..fileio import write_text

JSONL_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends records ``{"kind": "train" | "validation", "step": int, ...}`` to the run directory.

    ``metrics.jsonl`` gets every record; ``train.csv`` and ``validation.csv`` one row per record of their kind
    (columns fixed by the first record). When a run resumes from step s, records after s (written before the
    interruption, and about to be produced again) are dropped first, so the files read like one run.
    """

    def __init__(self, directory: Path, *, resume_step: int | None = None, tensorboard: bool = False) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("run.tensorboard needs the tensorboard package: pip install tensorboard") from None
            self._writer = SummaryWriter(log_dir=str(directory / "tensorboard"), purge_step=resume_step)

    def write(self, kind: str, step: int, values: dict[str, float]) -> None:
        record = {"kind": kind, "step": step, **values}
        with open(self.directory / JSONL_FILE, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        csv_path = self.directory / f"{kind}.csv"
        new_file = not csv_path.is_file() or csv_path.stat().st_size == 0
        columns = ["step", *values] if new_file else _csv_columns(csv_path)
        with open(csv_path, "a", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            if new_file:
                writer.writeheader()
            writer.writerow({"step": step, **values})
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{kind}/{name}", value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _truncate_after(self, step: int) -> None:
        jsonl = self.directory / JSONL_FILE
        if jsonl.is_file():
            kept = [line for line in jsonl.read_text(encoding="utf-8").splitlines(keepends=True)
                    if line.strip() and json.loads(line)["step"] <= step]
            write_text(jsonl, "".join(kept))
        for csv_path in self.directory.glob("*.csv"):
            rows = list(csv.reader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
            if not rows:
                continue
            kept_rows = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= step]
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(kept_rows)
            write_text(csv_path, buffer.getvalue())


def _csv_columns(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as file:
        return next(csv.reader(file))

