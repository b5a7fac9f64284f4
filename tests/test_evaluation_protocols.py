"""Every protocol end to end on synthetic datasets in the official formats with a tiny random model; resuming
from cached per-sample results; the input geometries; the reports; the `clipseg eval` command; the shipped
configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clipseg import load_model
from clipseg.evaluation.config import config_from_dict, load_config
from clipseg.evaluation.engine import Runtime
from clipseg.evaluation.inference import (
    Placement,
    Segmenter,
    letterbox_size,
    place_mask,
    prepare_input,
    probabilities_at_original,
)
from clipseg.evaluation.protocols import make_protocol
from clipseg.evaluation.protocols.pascal_zeroshot import PascalZeroShotProtocol, unseen_classes
from clipseg.evaluation.reference import TABLES
from clipseg.evaluation.runner import run_evaluation

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64  # the protocols' input size in these tests

pytestmark = pytest.mark.usefixtures("single_thread")


def _config(table: str, protocol: str, dataset: dict, tmp_path: Path, model: Path, **extra):
    return config_from_dict(
        {
            "table": table,
            "protocol": protocol,
            "dataset": dataset,
            "image_size": IMAGE_SIZE,
            "batch_size": 4,
            "qualitative": 2,
            "output": str(tmp_path / f"table{table}"),
            "models": [{"name": "CLIPSeg (PC+)", "source": str(model)}],
        }
        | extra
    )


def _protocol_configs(data: Path) -> dict[str, tuple[str, dict, dict]]:
    splits = data / "pascal" / "hsnet" / "data" / "splits" / "pascal" / "val"
    lvis = str(data / "lvis" / "lvis_v1_val.json")
    return {
        "3": ("phrasecut", {"root": str(data / "phrasecut")}, {}),
        "9": ("phrasecut", {"root": str(data / "phrasecut")}, {"prompts": ["text", "visual"]}),
        "4": ("pascal_zeroshot", {"root": str(data / "pascal")}, {}),
        "5": ("pascal5i", {"root": str(data / "pascal"), "splits": str(splits)}, {"episodes": 3}),
        "7": (
            "pascal5i",
            {"root": str(data / "pascal")},
            {"episodes": 2, "folds": [1, 2], "prompt": "text", "min_pixels": 64, "geometry": "squash"},
        ),
        "6": (
            "coco20i",
            {"root": str(data / "coco"), "splits": str(data / "coco" / "splits" / "coco" / "val")},
            {"episodes": 2, "geometry": "squash", "threshold": 0.1},
        ),
        "8": ("lvis_generalized", {"annotations": lvis}, {"max_images_per_prompt": 1}),
        "2": (
            "visual_prompt_engineering",
            {"annotations": lvis},
            {"samples": 2, "variants": ["cls_mask_all", "red_outline", "blur", "crop_blur_highlight"]},
        ),
    }


@pytest.mark.parametrize("table", ["2", "3", "4", "5", "6", "7", "8", "9"])
def test_every_protocol_runs_end_to_end_and_reports(table, benchmarks, tiny_model_dir, tmp_path):
    protocol, dataset, options = _protocol_configs(benchmarks)[table]
    config = _config(table, protocol, dataset, tmp_path, tiny_model_dir, options=options, limit=8)
    result = run_evaluation(config, progress=False)
    layout = TABLES[table]
    for row in result.rows:
        for column in layout.columns:
            value = row.values[column.key]
            assert math.isfinite(value), (column.key, value)
            if column.percent and table != "2":
                assert 0.0 <= value <= 1.0
    report = result.files.markdown.read_text()
    assert "| ours |" in report.replace(result.rows[0].name + " ", "") or "| ours |" in report
    assert f"| {layout.rows[-1][0]} | paper |" in report  # other methods quoted as reference rows
    fidelity = report.split("## Fidelity to the released code", 1)[1]  # issue 12: every report says how it relates
    assert "Follows the released code:" in fidelity and "Deliberately different:" in fidelity
    data = json.loads(result.files.json.read_text())
    assert data["table"] == table and len(data["rows"]) == len(result.rows)
    for plot in result.files.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if table != "2" and table != "4":
        assert {p.name for p in result.files.plots} >= {"precision_recall.png", "iou_vs_threshold.png"}
        assert any(p.name.startswith("qualitative_") for p in result.files.plots)


def test_interrupted_runs_resume_from_cached_samples(benchmarks, tiny_model_dir, tmp_path, monkeypatch):
    protocol, dataset, options = _protocol_configs(benchmarks)["5"]
    options = {**options, "folds": [0]}
    settings = {"options": options, "qualitative": 1}
    first = run_evaluation(
        _config("5", protocol, dataset, tmp_path, tiny_model_dir, limit=2, **settings), progress=False
    )
    fresh = run_evaluation(
        _config("5", protocol, dataset, tmp_path / "fresh", tiny_model_dir, limit=3, **settings),
        resume=False,
        progress=False,
    )
    calls = []
    original = Segmenter.probabilities

    def counting(self, images, conditionals, image_index=None):
        calls.append(len(images))
        return original(self, images, conditionals, image_index)

    monkeypatch.setattr(Segmenter, "probabilities", counting)
    resumed = run_evaluation(
        _config("5", protocol, dataset, tmp_path, tiny_model_dir, limit=3, **settings), progress=False
    )
    assert sum(calls) == 1 + 1  # only the third episode is new (+ the one qualitative example, always redrawn)
    for key in ("miou@t", "biniou@t", "ap", "fgiou@best"):
        assert resumed.rows[0].values[key] == pytest.approx(fresh.rows[0].values[key], abs=1e-12)
    assert first.rows[0].values["ap"] != resumed.rows[0].values["ap"] or first.rows[0].values["miou@t"] != 0


def test_cache_depends_on_the_weights(benchmarks, tiny_model_dir, tmp_path):
    from clipseg.testing import random_model

    other = tmp_path / "other_model"
    random_model(seed=7).save_pretrained(other)
    protocol, dataset, _ = _protocol_configs(benchmarks)["3"]
    one = run_evaluation(
        _config("3", protocol, dataset, tmp_path, tiny_model_dir, limit=2, qualitative=0), progress=False
    )
    two = run_evaluation(_config("3", protocol, dataset, tmp_path, other, limit=2, qualitative=0), progress=False)
    assert one.rows[0].values["text/ap"] != two.rows[0].values["text/ap"]


def test_letterbox_geometry_maps_predictions_back_to_the_original_pixels():
    assert letterbox_size(375, 500, 352) == (264, 352)  # PFENet: longer side 352, the other rounded down to 8s
    assert letterbox_size(500, 333, 352) == (232, 352)[::-1]
    assert letterbox_size(200, 100, 352) == (200, 100)  # never enlarged
    rng = np.random.default_rng(0)
    mask = np.zeros((150, 200), dtype=bool)
    mask[30:90, 40:150] = True
    from PIL import Image

    image = Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8))
    pixels, placement = prepare_input(image, 64, "letterbox", (0.5,) * 3, (0.5,) * 3)
    assert placement == Placement((48, 64), (150, 200)) and pixels.shape == (3, 64, 64)
    assert torch.all(pixels[:, 48:] == -1.0)  # black padding below the image
    canvas = place_mask(mask, 64, "letterbox").float()
    back = probabilities_at_original(canvas, placement, "letterbox") > 0.5
    intersection = (back.numpy() & mask).sum()
    assert intersection / (back.numpy() | mask).sum() > 0.95
    squashed = probabilities_at_original(canvas, placement, "squash")
    assert squashed.shape == (64, 64)
    speck = np.zeros((150, 200), dtype=bool)
    speck[100, 101] = True  # smaller than one output pixel: lost, as in the original (no ground-truth rescue)
    assert not place_mask(speck, 16, "squash").any()


def test_zero_shot_argmax_weights_the_background_prompt(benchmarks, tiny_model_dir, tmp_path, monkeypatch):
    protocol, dataset, _ = _protocol_configs(benchmarks)["4"]
    config = _config("4", protocol, dataset, tmp_path, tiny_model_dir, limit=1)
    zero_shot = make_protocol(config)
    assert isinstance(zero_shot, PascalZeroShotProtocol)
    assert unseen_classes(4) == [1, 10, 14, 18] and unseen_classes(10)[-1] == 20

    def fixed(self, images, conditionals, image_index=None):
        # background 0.3, class k (1-based) 0.4 + k/100: weighted background 0.9 beats every class.
        values = torch.tensor([0.3] + [0.4 + k / 100 for k in range(1, 21)])[-(len(conditionals) // len(images)) :]
        return values.repeat(len(images))[:, None, None].expand(-1, IMAGE_SIZE, IMAGE_SIZE).clone()

    monkeypatch.setattr(Segmenter, "probabilities", fixed)

    segmenter = Segmenter(load_model(str(tiny_model_dir)), image_size=IMAGE_SIZE)
    image_id = zero_shot.voc.image_ids[0]
    runtime = Runtime(config)
    [(read_id, counts)] = zero_shot._confusion(segmenter, [image_id], zero_shot.options, runtime)
    assert read_id == image_id and counts[:, 0].sum() == counts.sum()  # everything predicted background
    without = zero_shot.options_for(None).__class__(background_weight=None)
    counts = zero_shot._confusion(segmenter, [image_id], without, runtime)[0][1]
    assert counts[:, 20].sum() == counts.sum()  # the highest class (tvmonitor) everywhere


def test_eval_command_prints_the_table_and_reports_missing_data(benchmarks, tiny_model_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from clipseg.cli import app

    protocol, dataset, options = _protocol_configs(benchmarks)["7"]
    config_path = tmp_path / "table7.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "table": "7",
                "protocol": protocol,
                "dataset": dataset,
                "options": options,
                "image_size": IMAGE_SIZE,
                "models": [{"name": "x", "source": "missing/model/dir"}],
                "output": str(tmp_path / "out"),
            }
        )
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["eval", str(config_path), "--model", f"CLIPSeg (PC+)={tiny_model_dir}", "--limit", "2", "--batch-size", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "| CLIPSeg (PC+) | ours |" in result.stdout and "| PFENet (VGG16) | paper |" in result.stdout
    assert (tmp_path / "out" / "results.json").is_file()
    result = runner.invoke(
        app, ["eval", str(config_path), "--root", str(tmp_path / "nowhere"), "--model", str(tiny_model_dir)]
    )
    assert result.exit_code == 1
    assert "VOCtrainval_11-May-2012.tar" in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["eval", str(config_path)])
    assert result.exit_code == 1 and "weights not found at missing/model/dir" in result.output


def test_config_errors_are_one_clear_line(tmp_path):
    base = {"table": "3", "protocol": "phrasecut", "dataset": {"root": "x"}, "models": [{"name": "a", "source": "b/c"}]}
    with pytest.raises(ValueError, match="unknown protocol"):
        config_from_dict({**base, "protocol": "kitti"})
    with pytest.raises(ValueError, match="config: unknown config key 'epochs'"):
        config_from_dict({**base, "epochs": 3})
    with pytest.raises(ValueError, match="needs a 'source'"):
        config_from_dict({**base, "models": [{"name": "a"}]})
    with pytest.raises(ValueError, match="unknown config key 'options.treshold'"):
        make_protocol(config_from_dict({**base, "options": {"treshold": 0.3}}))
    with pytest.raises(ValueError, match="prompts must be"):
        make_protocol(config_from_dict({**base, "options": {"prompts": ["audio"]}}))
    with pytest.raises(ValueError, match="dataset: phrasecut needs"):
        make_protocol(config_from_dict({**base, "dataset": {}}))
    per_fold = config_from_dict({**base, "models": [{"name": "a", "sources": {0: "fold0/model"}}]}).models[0]
    assert per_fold.source_for("0") == "fold0/model"
    with pytest.raises(ValueError, match="no source for task '1'"):
        per_fold.source_for("1")


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    config = load_config(path)
    make_protocol(config)
    assert config.table in TABLES and path.name.startswith(f"table{config.table}_")


def test_a_config_per_paper_table():
    tables = {load_config(p).table for p in (REPO / "configs" / "eval").glob("*.yaml")}
    assert tables == set(TABLES)


def test_save_figure_writes_a_whole_png_or_nothing(tmp_path):
    from matplotlib.figure import Figure
    from PIL import Image

    from clipseg.evaluation.reports import save_figure

    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], [0, 1])
    save_figure(figure, tmp_path / "plot.png")
    assert Image.open(tmp_path / "plot.png").format == "PNG"
    assert [path.name for path in tmp_path.iterdir()] == ["plot.png"]

    def fail_midway(file, **options):
        Path(file).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    figure.savefig = fail_midway
    with pytest.raises(OSError, match="disk full"):
        save_figure(figure, tmp_path / "broken.png")
    assert [path.name for path in tmp_path.iterdir()] == ["plot.png"]
