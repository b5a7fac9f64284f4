"""The README's "Your own data" example, every command as written there, run on a tiny model.

The commands are read from the README block between ``<!-- own-data-example -->`` markers, so the README and
this test cannot drift apart. The only changes are for speed and for the missing network: the released model is a
tiny random one saved locally, datasets are 3-6 small images, and training runs 2 steps at 64 px.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import clipseg
from clipseg import cli
from clipseg.data import synthetic
from clipseg.testing import he_init_, tiny_config
from clipseg.thresholds import Thresholds

REPO = Path(__file__).resolve().parents[1]
RELEASED = "CIDAS/clipseg-rd64-refined"
TRAIN_SPEED = [
    "--set", "optim.max_iterations=2", "--set", "optim.batch_size=2", "--set", "data.image_size=64",
    "--set", "data.num_workers=0", "--set", "run.device=cpu", "--set", "run.progress=false",
]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- own-data-example -->\n```bash\n(.*?)```\n<!-- /own-data-example -->", text, re.S)
    assert block, "the README lost its own-data example block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.usefixtures("single_thread")
def test_the_readme_own_data_example_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    released = tmp_path / "released"
    he_init_(clipseg.CLIPSeg(dataclasses.replace(tiny_config("refined"), image_size=64)), seed=0).save_pretrained(released)
    runner = CliRunner()
    commands = readme_commands()
    assert [c.split()[:2] for c in commands] == [["python", "-m"]] * 3 + [
        ["clipseg", "train"], ["clipseg", "eval"], ["clipseg", "segment"], ["clipseg", "convert"],
    ]
    for command in commands:
        words = [word.replace(RELEASED, str(released)) for word in shlex.split(command)]
        if words[:3] == ["python", "-m", "clipseg.data.synthetic"]:
            words = [re.sub(r"^\d+$", "4", w) if words[k - 1] == "--n" else w for k, w in enumerate(words)]
            synthetic.main(words[3:] + ["--height", "40", "--width", "48"])
            continue
        if words[1] == "train":
            words[2] = str(REPO / words[2])
            words += ["--set", f"model.init={released}", *TRAIN_SPEED]
        done = runner.invoke(cli.app, words[1:])
        assert done.exit_code == 0, f"{command}\n{done.output}"
    # 2. the fine-tuned model carries thresholds chosen on mydata/val
    model = clipseg.load_model("runs/finetune-folder/model")
    assert model.thresholds is not None and model.thresholds.model.endswith("runs/finetune-folder/model")
    # 3. released and fine-tuned side by side; the thresholds are the fine-tuned model's best IoU_FG thresholds
    results = json.loads(Path("runs/eval/mydata/results.json").read_text())
    assert [row["name"] for row in results["rows"]] == ["fine-tuned", "released"]
    first = results["rows"][0]
    written = Thresholds.load("thresholds.json")
    assert written.model == "runs/finetune-folder/model" and written.overall == first["values"]["all/fgiou@best_t"]
    for prompt, value in written.prompts.items():
        assert value == first["values"][f"prompt/{prompt}/fgiou@best_t"]
    # 4. masks of the test images, thresholded per prompt
    masks = sorted(Path("masks").rglob("*.png"))
    assert len(masks) == 2 * len(list(Path("mydata/test/images").iterdir()))
    predictor = clipseg.Predictor(model)
    predictor.set_image(next(Path("mydata/test/images").iterdir()))
    probabilities = predictor.predict(["the red circle"]).probabilities[0].numpy()
    (saved,) = [p for p in masks if p.name.startswith(next(Path("mydata/test/images").iterdir()).stem)
                and "red_circle" in p.name]
    expected = probabilities >= written.for_prompt("the red circle")
    assert np.array_equal(np.asarray(Image.open(saved)) > 127, expected)
    # 5. the transformers layout
    assert {"config.json", "model.safetensors"} <= {p.name for p in Path("published").iterdir()}
    assert json.loads(Path("published/config.json").read_text())["model_type"] == "clipseg"
