"""Issue 11, evaluation: a bad sample is reported and left out (listed in the report), broken annotation files and
config values are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clipseg.evaluation.config import config_from_dict
from clipseg.evaluation.runner import run_evaluation
from clipseg.fileio import UnreadableFileError

pytestmark = pytest.mark.usefixtures("single_thread")


def _phrasecut_config(root: Path, output: Path, model: Path, **extra):
    return config_from_dict(
        {
            "table": "3",
            "protocol": "phrasecut",
            "dataset": {"root": str(root)},
            "image_size": 64,
            "batch_size": 4,
            "qualitative": 2,
            "output": str(output),
            "models": [{"name": "CLIPSeg (PC+)", "source": str(model)}],
        }
        | extra
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_is_reported_and_left_out(benchmarks, tiny_model_dir, tmp_path, workers):
    root = tmp_path / "phrasecut"
    shutil.copytree(benchmarks / "phrasecut", root)
    test_tasks = json.loads(next(root.rglob("refer_test.json")).read_text())
    broken = next(root.rglob(f"{test_tasks[0]['image_id']}.jpg"))
    broken.write_bytes(broken.read_bytes()[:60])  # truncated JPEG
    config = _phrasecut_config(root, tmp_path / "out", tiny_model_dir, limit=8, workers=workers)
    with pytest.warns(UserWarning, match=rf"failed and is left out: .*{broken.name}"):
        result = run_evaluation(config, progress=False)
    assert result.failed and all(broken.name in reason for reason in result.failed.values())
    report = result.files.markdown.read_text()
    assert f"Failed samples: {len(result.failed)}" in report and broken.name in report
    data = json.loads(result.files.json.read_text())
    assert {entry["key"] for entry in data["failed_samples"]} == set(result.failed)
    assert result.rows and all(value == value for value in result.rows[0].values.values())  # scores of the rest


def test_truncated_refer_json_names_the_file(benchmarks, tmp_path):
    from clipseg.data.phrasecut import PhraseCut

    root = tmp_path / "phrasecut"
    shutil.copytree(benchmarks / "phrasecut", root)
    refer = next(root.rglob("refer_val.json"))
    refer.write_text(refer.read_text()[:-20])
    with pytest.raises(UnreadableFileError, match=rf"{refer.name}: not valid JSON, truncated or corrupt"):
        PhraseCut(root, "val")


@pytest.mark.parametrize("threshold", ["high", float("nan"), 1.5])
def test_model_threshold_errors_name_the_key(threshold):
    with pytest.raises(ValueError, match="threshold"):
        config_from_dict(
            {"table": "3", "protocol": "phrasecut", "models": [{"name": "a", "source": "x", "threshold": threshold}]}
        )
