"""Reports of an evaluation run: a Markdown table in the paper's layout with the paper's numbers beside ours, a JSON
file with every value, and PNG plots (precision-recall curves, IoU vs threshold, a qualitative grid).

Every file is written to a temporary name in the output directory and moved into place when complete.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path, write_text
from .settings import EvalConfig
from .engine import Row
from .metrics import THRESHOLDS
from .protocols import PROTOCOLS
from .protocols.base import Fidelity
from .reference import PaperTable, paper_table

MAX_LISTED_FAILURES = 50  # failed samples listed in report.md (results.json lists all)


@dataclass
class ReportFiles:
    """Paths of the files a run wrote."""

    markdown: Path
    json: Path
    plots: list[Path] = field(default_factory=list)


def _format(value: float | None, percent: bool, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * 100:.{decimals}f}" if percent else f"{value:g}"


def _format_published(value: float | None, percent: bool, decimals: int) -> str:
    """Published numbers are already in percent."""
    if value is None:
        return "-"
    return f"{value:.{decimals}f}" if percent else f"{value:g}"


def markdown_table(config: EvalConfig, rows: Sequence[Row], table: PaperTable) -> str:
    """The results in the paper's layout: each of our rows followed by the paper's row it reproduces, then the
    paper's remaining rows (other methods) as reference."""
    decimals = 2 if table.number == "2" else 1
    headers = ["Model", "Source", *[c.header for c in table.columns]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    quoted: set[str] = set()
    for row in rows:
        cells = [_format(row.values.get(c.key), c.percent, decimals) for c in table.columns]
        lines.append("| " + " | ".join([row.name, "ours", *cells]) + " |")
        published = table.paper_row(row.paper_row)
        if published is not None:
            quoted.add(row.paper_row)
            cells = [_format_published(v, c.percent, decimals) for v, c in zip(published, table.columns)]
            lines.append("| " + " | ".join([row.paper_row, "paper", *cells]) + " |")
    for name, published in table.rows:
        if name not in quoted:
            cells = [_format_published(v, c.percent, decimals) for v, c in zip(published, table.columns)]
            lines.append("| " + " | ".join([name, "paper", *cells]) + " |")
    return "\n".join(lines)


def markdown_report(
    config: EvalConfig,
    rows: Sequence[Row],
    table: PaperTable,
    plots: Sequence[Path],
    failed: Mapping[str, str] | None = None,
) -> str:
    """The whole Markdown report (`failed`: samples that could not be loaded, key -> reason)."""
    title = config.title or f"Table {table.number}: {table.title}"
    settings = [
        f"protocol `{config.protocol}`",
        f"input {config.image_size}x{config.image_size}",
        *(f"{k} `{v}`" for k, v in sorted(config.options.items())),
    ]
    if config.limit is not None:
        settings.append(f"**limited to the first {config.limit} samples per task (not comparable to the paper)**")
    parts = [
        f"# {title}",
        "",
        f"Paper: Table {table.number}, {table.title}. Values in percent"
        + (" (ΔP in percentage points)" if table.number == "2" else "")
        + "; 'paper' rows quote the published numbers.",
        "",
        "Settings: " + ", ".join(settings) + ".",
        "",
        markdown_table(config, rows, table),
        "",
    ]
    if table.notes:
        parts += ["Notes:", "", *[f"- {note}" for note in table.notes], ""]
    parts += fidelity_section(PROTOCOLS[config.protocol].fidelity)
    sources = [f"- {m.name}: `{m.source or dict(m.sources)}`" for m in config.models]
    parts += ["Models:", "", *sources, ""]
    if failed:
        listed = [f"- `{key}`: {reason}" for key, reason in list(failed.items())[:MAX_LISTED_FAILURES]]
        if len(failed) > MAX_LISTED_FAILURES:
            listed.append(f"- … and {len(failed) - MAX_LISTED_FAILURES} more (all in results.json)")
        parts += [f"**Failed samples: {len(failed)}**, left out of every score:", "", *listed, ""]
    if plots:
        parts += ["Plots:", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    return "\n".join(parts)


def fidelity_section(fidelity: Fidelity) -> list[str]:
    """The report's lines on where the protocol follows the released code and where it deliberately departs."""
    if not fidelity.follows and not fidelity.departs:
        return []
    lines = ["## Fidelity to the released code", ""]
    if fidelity.follows:
        lines += ["Follows the released code:", "", *[f"- {item}" for item in fidelity.follows], ""]
    if fidelity.departs:
        lines += ["Deliberately different:", "", *[f"- {item}" for item in fidelity.departs], ""]
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def results_json(
    config: EvalConfig, rows: Sequence[Row], table: PaperTable, failed: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Every value of the run, the published numbers, the settings and the samples that failed to load."""
    return _jsonable(
        {
            "table": table.number,
            "title": table.title,
            "protocol": config.protocol,
            "settings": {
                "image_size": config.image_size,
                "dataset": dict(config.dataset),
                "options": dict(config.options),
                "limit": config.limit,
                "seed": config.seed,
            },
            "thresholds": THRESHOLDS,
            "rows": [
                {
                    "name": row.name,
                    "paper_row": row.paper_row,
                    "values": row.values,
                    "paper_values": dict(zip([c.key for c in table.columns], table.paper_row(row.paper_row) or ())),
                    "details": row.details,
                    "curves": {
                        label: {
                            "iou_fg": s.iou_fg,
                            "iou_bin": s.iou_bin,
                            "miou": s.miou,
                            "recall": s.recall,
                            "precision": s.precision,
                            "ap": s.ap,
                            "statistics": s.statistics,
                        }
                        for label, s in row.curves.items()
                    },
                }
                for row in rows
            ],
            "paper": [
                {"name": name, "values": dict(zip([c.key for c in table.columns], values))}
                for name, values in table.rows
            ],
            "models": [
                {"name": m.name, "source": m.source, "sources": dict(m.sources), "threshold": m.threshold}
                for m in config.models
            ],
            "failed_samples": [{"key": key, "reason": reason} for key, reason in (failed or {}).items()],
        }
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:50] or "row"


def save_figure(figure: Any, path: Path) -> None:
    """Write a matplotlib `Figure` as PNG (110 dpi, tight bounding box) atomically: a temporary file in the same
    directory, then renamed, so a report never holds half a plot. Needs no pyplot (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")


def curve_plots(rows: Sequence[Row], directory: Path) -> list[Path]:
    """precision_recall.png and iou_vs_threshold.png with one line per (row, curve)."""
    from matplotlib.figure import Figure

    curves = [
        (f"{row.name} ({label})" if len(row.curves) > 1 else row.name, scores)
        for row in rows
        for label, scores in row.curves.items()
    ]
    if not curves:
        return []
    pr = Figure(figsize=(6, 4.5))
    axis = pr.add_subplot()
    for name, scores in curves:
        axis.plot(scores.recall, scores.precision, marker=".", label=f"{name}, AP {scores.ap * 100:.1f}")
    axis.set(
        xlabel="recall (TP / (1 + TP + FN))",
        ylabel="precision (TP / (1 + TP + FP))",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Precision-recall over the 49 thresholds",
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    iou = Figure(figsize=(6, 4.5))
    axis = iou.add_subplot()
    for name, scores in curves:
        (line,) = axis.plot(THRESHOLDS, scores.iou_fg, label=f"{name} IoU_FG")
        axis.plot(THRESHOLDS, scores.iou_bin, linestyle="--", color=line.get_color(), label=f"{name} IoU_BIN")
        if scores.miou is not None:
            axis.plot(THRESHOLDS, scores.miou, linestyle=":", color=line.get_color(), label=f"{name} mIoU")
    axis.set(xlabel="threshold t", ylabel="IoU", xlim=(0, 1), ylim=(0, 1), title="IoU vs threshold")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6)
    paths = [directory / "precision_recall.png", directory / "iou_vs_threshold.png"]
    save_figure(pr, paths[0])
    save_figure(iou, paths[1])
    return paths


def qualitative_plot(row: Row, directory: Path) -> Path | None:
    """A grid of (support prompt /) image / prediction / ground truth for a row's examples."""
    from matplotlib.figure import Figure

    if not row.examples:
        return None
    count = len(row.examples)
    with_support = any(example.support is not None for example in row.examples)
    columns = 4 if with_support else 3
    figure = Figure(figsize=(2.5 * columns, 2.4 * count))
    for k, example in enumerate(row.examples):
        panels = [
            (example.image, None, example.caption),
            (example.probabilities, "magma", "prediction"),
            (example.target, "gray", "ground truth"),
        ]
        if with_support:
            support = example.support if example.support is not None else np.zeros_like(example.image)
            panels.insert(0, (support, None, "support (visual prompt)"))
        for column, (data, cmap, title) in enumerate(panels):
            axis = figure.add_subplot(count, columns, columns * k + column + 1)
            axis.imshow(data, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None, interpolation="nearest")
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.suptitle(row.name, fontsize=9)
    path = directory / f"qualitative_{_slug(row.name)}.png"
    save_figure(figure, path)
    return path


def write_report(
    config: EvalConfig,
    rows: Sequence[Row],
    directory: str | os.PathLike | None = None,
    *,
    failed: Mapping[str, str] | None = None,
) -> ReportFiles:
    """Write report.md, results.json and the plots to `directory` (default: the config's output); `failed` lists
    the samples that could not be loaded (key -> reason)."""
    directory = Path(directory) if directory is not None else config.output_dir
    directory.mkdir(parents=True, exist_ok=True)
    table = paper_table(config.table)
    plots = curve_plots(rows, directory)
    plots += [path for row in rows if (path := qualitative_plot(row, directory)) is not None]
    markdown_path, json_path = directory / "report.md", directory / "results.json"
    text = markdown_report(config, rows, table, plots, failed)
    write_text(markdown_path, text)
    payload = json.dumps(results_json(config, rows, table, failed), indent=2, allow_nan=False)
    write_text(json_path, payload)
    return ReportFiles(markdown_path, json_path, plots)
