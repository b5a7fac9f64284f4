"""The report of an own-data evaluation (`clipseg eval --data`): models side by side overall and per prompt, the
best thresholds, and plots (precision-recall, IoU vs threshold, per-image IoU distribution, best/worst images).

results.json keeps the protocols' schema (`clipseg.evaluation.reports.results_json`): one row per model whose
``values`` hold ``all/<metric>`` and ``prompt/<prompt>/<metric>``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..fileio import write_text
from .engine import Row
from .reference import Column, PaperTable
from .reports import ReportFiles, curve_plots, qualitative_plot, results_json, save_figure
from .settings import EvalConfig

_METRICS = (("AP", "ap"), ("IoU_FG", "fgiou"), ("mIoU", "miou"), ("IoU_BIN", "biniou"))

OWN_DATA_TABLE = PaperTable(
    number="own data",
    title="Own labelled data",
    columns=(
        Column("AP", "all/ap"),
        *(Column(f"{header} best", f"all/{key}@best") for header, key in _METRICS[1:]),
        *(Column(f"{header} best t", f"all/{key}@best_t", percent=False) for header, key in _METRICS[1:]),
        *(Column(f"{header} @0.5", f"all/{key}@0.5") for header, key in _METRICS[1:]),
    ),
    rows=(),
)
"""The columns of results.json's rows (no published numbers: this is the user's data)."""


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 100:.1f}"


def _prompts(rows: Sequence[Row]) -> list[str]:
    return sorted({prompt for row in rows for prompt in row.details["prompts"]})


def _table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    rows = [headers, ["---"] * len(headers), *lines]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)


def overall_table(rows: Sequence[Row]) -> str:
    """One line per model: AP, then each IoU at its best threshold (with it) and at 0.5."""
    headers = ["Model", "AP"]
    headers += [f"{h} best (t)" for h, _ in _METRICS[1:]] + [f"{h} @0.5" for h, _ in _METRICS[1:]]
    lines = []
    for row in rows:
        v = row.values
        cells = [row.name, _percent(v["all/ap"])]
        cells += [f"{_percent(v[f'all/{k}@best'])} ({v[f'all/{k}@best_t']:.2f})" for _, k in _METRICS[1:]]
        cells += [_percent(v[f"all/{k}@0.5"]) for _, k in _METRICS[1:]]
        lines.append(cells)
    return _table(headers, lines)


def prompt_table(rows: Sequence[Row]) -> str:
    """One line per prompt: samples, then per model AP and IoU_FG at the prompt's best threshold (with it)."""
    headers = ["Prompt", "Samples"]
    for row in rows:
        headers += [f"{row.name}: AP", f"{row.name}: IoU_FG best (t)", f"{row.name}: IoU_FG @0.5"]
    lines = []
    for prompt in _prompts(rows):
        samples = next(r.details["prompts"][prompt]["samples"] for r in rows if prompt in r.details["prompts"])
        cells = [prompt, str(samples)]
        for row in rows:
            key = f"prompt/{prompt}/"
            if f"{key}ap" not in row.values:
                cells += ["-", "-", "-"]
                continue
            v = row.values
            best = f"{_percent(v[key + 'fgiou@best'])} ({v[key + 'fgiou@best_t']:.2f})"
            cells += [_percent(v[key + "ap"]), best, _percent(v[key + "fgiou@0.5"])]
        lines.append(cells)
    return _table(headers, lines)


def per_image_plot(rows: Sequence[Row], directory: Path) -> Path:
    """per_image_iou.png: the distribution of per-sample IoU (at each model's best overall threshold)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    axis = figure.add_subplot()
    bins = np.linspace(0, 1, 21)
    for row in rows:
        per_sample = row.details["per_sample_iou"]
        values = np.asarray(list(per_sample["values"].values()))
        label = f"{row.name} (t = {per_sample['threshold']:.2f}, median {np.median(values):.2f})"
        axis.hist(values, bins=bins, histtype="step", linewidth=1.5, label=label)
    axis.set(xlabel="IoU of one (image, prompt) pair", ylabel="pairs", xlim=(0, 1), title="Per-image IoU")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    path = directory / "per_image_iou.png"
    save_figure(figure, path)
    return path


def markdown(config: EvalConfig, rows: Sequence[Row], plots: Sequence[Path]) -> str:
    first = rows[0].details
    kind = "image prompts (support: another image of the same prompt)" if first["prompt_kind"] == "visual" else (
        "text prompts"
    )
    settings = [f"{kind}", *(f"{k} `{v}`" for k, v in sorted(config.options.items()) if k != "prompts")]
    if config.limit is not None:
        settings.append(f"**limited to the first {config.limit} samples**")
    parts = [
        f"# {config.title or 'Evaluation on own data'}",
        "",
        f"Data: `{config.dataset['data']}` ({first['layout']} layout): {first['samples']} (image, prompt) pairs on "
        f"{first['images']} images, {len(_prompts(rows))} prompts"
        + (f"; {first['skipped']} pairs without a support from another image left out" if first["skipped"] else "")
        + ".",
        "",
        "Settings: " + ", ".join(settings) + ". Scored at each image's own size, as `clipseg segment` predicts.",
        "",
        "Metrics in percent, the paper's definitions (49 thresholds 0.02-0.98, pixel counts summed over the set; "
        "mIoU: the mean over prompts of each prompt's IoU_FG). 'best' is the threshold that maximises the metric on "
        "this data (in parentheses).",
        "",
        "## Overall",
        "",
        overall_table(rows),
        "",
        "## Per prompt",
        "",
        prompt_table(rows),
        "",
        "## Models",
        "",
        *[f"- {row.name}: `{row.details['source']}`" for row in rows],
        "",
    ]
    if plots:
        parts += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    return "\n".join(parts)


def write_own_data_report(
    config: EvalConfig, rows: Sequence[Row], directory: str | os.PathLike | None = None
) -> ReportFiles:
    """Write report.md, results.json and the plots to `directory` (default: the config's output)."""
    directory = Path(directory) if directory is not None else config.output_dir
    directory.mkdir(parents=True, exist_ok=True)
    plots = curve_plots(rows, directory) + [per_image_plot(rows, directory)]
    plots += [path for row in rows if (path := qualitative_plot(row, directory)) is not None]
    markdown_path, json_path = directory / "report.md", directory / "results.json"
    write_text(markdown_path, markdown(config, rows, plots))
    payload = results_json(config, rows, OWN_DATA_TABLE)
    write_text(json_path, json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False))
    return ReportFiles(markdown_path, json_path, plots)
