"""Issue 11, training: bad samples are skipped and counted, configs and data checked first, resume reads like one
run, a finished run says so, a malicious training state is refused with our safety message."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from training_fixtures import CrashingDataset, ShapesSource, SimulatedCrash, shapes_dataset, tiny_train_config
from typer.testing import CliRunner

from clipseg.checkpoints.errors import CheckpointError
from clipseg.data.phrasecut_plus import PhraseCutPlus
from clipseg.image import ImageLoadError
from clipseg.training.checkpoint import STATE_FILE, read_checkpoint
from clipseg.training.config import TrainConfig
from clipseg.training.data import BadSampleError
from clipseg.training.trainer import Trainer

IMAGE_SIZE = 32


class _BrokenSource(ShapesSource):
    """Shapes whose images `broken` cannot be read, as a corrupt file on disk would fail."""

    def __init__(self, broken: set[int]) -> None:
        super().__init__(12, seed=0, size=IMAGE_SIZE)
        self.broken = broken

    def load_image(self, index: int):
        if index in self.broken:
            raise ImageLoadError(f"/data/images/{index}.jpg: truncated or corrupt image (image file is truncated)")
        return super().load_image(index)


def _records(path: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["kind"] == kind]


def _app():
    import typer

    from clipseg.training.cli import train

    app = typer.Typer()
    app.command()(train)
    app.command("other")(lambda: None)
    return app


def test_a_bad_sample_is_skipped_with_a_warning_and_counted(tmp_path, caplog):
    dataset = PhraseCutPlus(_BrokenSource({0, 1}), image_size=IMAGE_SIZE, with_visual=False, negative_prob=0.0)
    trainer = Trainer(tiny_train_config(tmp_path, optim={"max_iterations": 8}), train_dataset=dataset)
    with caplog.at_level(logging.WARNING, logger="clipseg"):
        result = trainer.train()
    assert result.step == 8
    warnings = [record.getMessage() for record in caplog.records if "unreadable training sample" in record.message]
    assert warnings and all("/data/images/" in message and ".jpg" in message for message in warnings)
    records = _records(tmp_path)
    # 8 steps x 4 samples = 32 draws from 11+ samples: every sample of the epochs is read, the two broken ones too.
    assert records[-1]["bad_samples"] == len(warnings) >= 2
    assert [record["bad_samples"] for record in records] == sorted(record["bad_samples"] for record in records)


def test_too_many_bad_samples_stop_the_run_naming_the_limit(tmp_path):
    dataset = PhraseCutPlus(_BrokenSource({0, 1, 2}), image_size=IMAGE_SIZE, with_visual=False, negative_prob=0.0)
    config = tiny_train_config(tmp_path, optim={"max_iterations": 8}, data={"max_bad_samples": 1})
    with pytest.raises(BadSampleError, match=r"more than data\.max_bad_samples = 1 \(the last: sample \d+: /data/images/"):
        Trainer(config, train_dataset=dataset).train()


def test_corrupt_image_file_of_a_folder_dataset_is_named(tmp_path):
    from clipseg.data import synthetic

    root = synthetic.write_folder(tmp_path / "data", 4, size=(32, 40))
    images = sorted((root / "images").glob("*.jpg"))
    images[0].write_bytes(images[0].read_bytes()[:40])
    from clipseg.data.folder import FolderSource

    source = FolderSource(root)
    index = next(i for i in range(len(source.samples)) if source.samples[i].image_path == images[0])
    with pytest.raises(ImageLoadError, match=str(images[0].name)):
        source.load_image(index)


def test_missing_dataset_is_reported_before_the_model_is_built(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr("clipseg.training.trainer.build_model", lambda *args, **kwargs: built.append(args))
    config = tiny_train_config(tmp_path / "run", data={"root": str(tmp_path / "no-such-dataset")})
    with pytest.raises((FileNotFoundError, ValueError), match="no-such-dataset"):
        Trainer(config)
    assert built == []


@pytest.mark.parametrize(("value", "key"), [("-0.001", "optim.lr"), (".nan", "optim.lr"), ("-1", "optim.lr_min")])
def test_learning_rate_errors_name_the_wrong_key(value, key):
    setting = "optim.lr_min" if key == "optim.lr_min" else "optim.lr"
    with pytest.raises(ValueError) as error:
        TrainConfig().with_overrides([f"{setting}={value}"])
    assert str(error.value).startswith(f"{key}:")


def test_resumed_run_logs_the_same_averages_as_an_uninterrupted_one(tmp_path):
    # Records every 4 steps, checkpoints every 3: the record of step 4 averages steps 1..4 across the resume.
    settings = {"optim": {"max_iterations": 8}, "run": {"log_every": 4, "checkpoint_every": 3}}
    Trainer(tiny_train_config(tmp_path / "a", **settings), train_dataset=shapes_dataset()).train()
    crashing = Trainer(tiny_train_config(tmp_path / "b", **settings), train_dataset=CrashingDataset(shapes_dataset(), 4 * 4 + 2))
    with pytest.raises(SimulatedCrash):
        crashing.train()
    Trainer.resume(tmp_path / "b", train_dataset=shapes_dataset()).train()
    timing = "samples_per_second"
    expected = [{k: v for k, v in r.items() if k != timing} for r in _records(tmp_path / "a")]
    actual = [{k: v for k, v in r.items() if k != timing} for r in _records(tmp_path / "b")]
    assert [r["step"] for r in actual] == [4, 8]
    assert actual == expected


def test_resuming_a_finished_run_says_it_is_complete(tmp_path):
    config = tiny_train_config(tmp_path / "run", optim={"max_iterations": 2})
    first = Trainer(config, train_dataset=shapes_dataset()).train()
    again = Trainer.resume(tmp_path / "run", train_dataset=shapes_dataset()).train()
    assert again.already_complete and again.step == 2
    assert again.loss == pytest.approx(first.loss)  # the last logged loss, not NaN


def test_cli_resume_of_a_finished_run(tmp_path):
    from clipseg.data.synthetic import write_phrasecut

    root = write_phrasecut(tmp_path / "data", 4, size=(32, 40))
    config = tiny_train_config(tmp_path / "run", data={"root": str(root)}, optim={"max_iterations": 1})
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(config.to_yaml())
    runner = CliRunner()
    assert runner.invoke(_app(), ["train", str(config_path)]).exit_code == 0
    again = runner.invoke(_app(), ["train", "--resume", str(tmp_path / "run")])
    assert again.exit_code == 0, again.output
    assert "already complete" in again.output and "nan" not in again.output


class _CreatesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_malicious_training_state_is_refused_with_our_safety_message(tmp_path):
    config = tiny_train_config(tmp_path / "run", optim={"max_iterations": 3}, run={"checkpoint_every": 3})
    Trainer(config, train_dataset=shapes_dataset()).train()
    checkpoint = read_checkpoint(tmp_path / "run")
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _CreatesMarker(marker)}, checkpoint.path / STATE_FILE)
    with pytest.raises(CheckpointError) as error:
        Trainer.resume(tmp_path / "run", train_dataset=shapes_dataset())
    message = str(error.value)
    assert "will not be unpickled for safety" in message and STATE_FILE in message
    assert "weights_only" not in message
    assert not marker.exists()
    with open(checkpoint.path / STATE_FILE, "wb") as file:
        pickle.dump({"optimizer": _CreatesMarker(marker)}, file, protocol=2)
    result = CliRunner().invoke(_app(), ["train", "--resume", str(tmp_path / "run")])
    assert result.exit_code == 1 and "error:" in result.output and "weights_only" not in result.output
    assert not marker.exists()
