"""The trainer: configs, frozen CLIP, exact resume, NaN stop, distributed equivalence, export, CLI."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from training_fixtures import (
    CrashingDataset,
    PoisonedDataset,
    ShapesSource,
    SimulatedCrash,
    distributed_worker,
    shapes_dataset,
    tiny_train_config,
)
from typer.testing import CliRunner

import clipseg
from clipseg.data.phrasecut_plus import PhraseCutPlus
from clipseg.training.checkpoint import list_checkpoints, read_checkpoint
from clipseg.training.config import TrainConfig, load_config
from clipseg.training.data import GlobalBatchSampler
from clipseg.training.trainer import NonFiniteLossError, Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread, and spinning threads crawl on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------ config


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: demo\noptim:\n  lr: 1e-3\n  batch_size: 8\nmodel:\n  preset: rd16\n")
    config = load_config(path, ["optim.lr=3e-4", "model.architecture.decoder.extract_layers=[3, 7, 9]", "run.val_every=null"])
    assert config.name == "demo" and config.optim.batch_size == 8 and config.model.preset == "rd16"
    assert config.optim.lr == pytest.approx(3e-4)  # "3e-4" is a string in YAML 1.1; floats accept it
    assert config.model.architecture == {"decoder": {"extract_layers": [3, 7, 9]}}
    assert config.optim.max_iterations == 20000 and config.optim.lr_min == pytest.approx(1e-4)
    assert TrainConfig.from_dict(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("run.seed=1.5", "run.seed: expected an integer"),
        ("optim.precision=fp8", "optim.precision: expected one of"),
        ("optim.lr_min=1", "optim.lr_min: need 0 <= lr_min <= lr"),
        ("optim.lr", "must look like section.key=value"),
    ],
)
def test_config_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig().with_overrides([override])


def test_shipped_configs_are_valid() -> None:
    """Every configs/train/*.yaml parses and names a buildable architecture and existing data presets."""
    from clipseg.data import wordnet
    from clipseg.model.config import PRESETS
    from clipseg.training.model import _with_architecture
    from clipseg.visual_prompt import VARIANTS

    paths = sorted((REPO / "configs" / "train").glob("*.yaml"))
    assert len(paths) >= 20
    for path in paths:
        config = load_config(path)
        assert config.name == path.stem, path
        if config.model.init is None:
            _with_architecture(PRESETS[config.model.preset], config.model.architecture)
        assert config.data.visual_variant in VARIANTS
        assert config.data.remove_classes in (None, *wordnet.PRESETS)


def test_sampler_batches_do_not_depend_on_process_count_or_start() -> None:
    single = GlobalBatchSampler(10, 4, seed=3)
    halves = [GlobalBatchSampler(10, 4, rank=r, world_size=2, seed=3) for r in range(2)]
    resumed = iter(GlobalBatchSampler(10, 4, seed=3, start_step=2))
    for step in range(5):  # crosses epoch boundaries (10 samples, 4 per batch)
        assert single.keys(step) == halves[0].keys(step) + halves[1].keys(step)
    assert next(resumed) == single.keys(2)
    first_epoch = [index for step in range(5) for epoch, index in single.keys(step) if epoch == 0]
    assert sorted(first_epoch) == list(range(10))
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        GlobalBatchSampler(10, 4, world_size=3)


# ----------------------------------------------------------------------------------------------- training


def test_clip_runs_without_autograd_and_only_the_decoder_learns(tmp_path: Path) -> None:
    trainer = Trainer(tiny_train_config(tmp_path), train_dataset=shapes_dataset())
    model = trainer.model
    grad_modes: list[bool] = []
    for name in ("extract_features", "encode_text", "encode_image"):
        original = getattr(model, name)

        def recording(*args, _original=original, **kwargs):
            grad_modes.append(torch.is_grad_enabled())
            return _original(*args, **kwargs)

        setattr(model, name, recording)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    batch = next(trainer._batches())
    assert (batch["text_weight"] < 1).any()  # the image tower runs too
    model.decoder.train()
    trainer._train_step(batch)

    assert len(grad_modes) == 3 and not any(grad_modes)
    for name, parameter in model.named_parameters():
        if name.startswith("decoder."):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None and not parameter.requires_grad, name
    assert all(torch.equal(frozen_before[k], v) for k, v in model.state_dict().items() if k in frozen_before)
    assert not all(torch.equal(decoder_before[k], v) for k, v in model.decoder.state_dict().items())


def _jsonl(path: Path, *, drop: tuple[str, ...] = ()) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in drop} for record in records]


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    uninterrupted = Trainer(tiny_train_config(tmp_path / "a"), train_dataset=shapes_dataset())
    uninterrupted.train()

    # Same run, killed while reading the batch of step 5 (after the checkpoint of step 3).
    crashing = Trainer(tiny_train_config(tmp_path / "b"), train_dataset=CrashingDataset(shapes_dataset(), 4 * 4 + 2))
    with pytest.raises(SimulatedCrash):
        crashing.train()
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step-00000003"]
    # A fresh process would start with other RNG states; the checkpoint must bring back its own.
    torch.manual_seed(1234), np.random.seed(1234), random.seed(1234)
    resumed = Trainer.resume(tmp_path / "b", train_dataset=shapes_dataset())
    assert resumed.step == 3
    resumed.train()

    for name, value in uninterrupted.model.decoder.state_dict().items():
        assert torch.equal(value, resumed.model.decoder.state_dict()[name]), name
    timing = ("samples_per_second",)
    assert _jsonl(tmp_path / "a" / "metrics.jsonl", drop=timing) == _jsonl(tmp_path / "b" / "metrics.jsonl", drop=timing)
    assert [r["step"] for r in _jsonl(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "b" / "train.csv").read_text().count("\n") == 7  # header + 6 steps, no duplicates

    checkpoint = read_checkpoint(tmp_path / "b")
    assert checkpoint.step == 6 and checkpoint.metadata["train_config"]["optim"]["max_iterations"] == 6
    assert checkpoint.metadata["model_config"]["decoder"]["reduce_dim"] == 16
    assert set(checkpoint.weights()) == {f"decoder.{k}" for k in resumed.model.decoder.state_dict()}
    assert set(checkpoint.training_state()) == {"optimizer", "scheduler", "scaler", "rng", "loss_window", "bad_samples"}

    with pytest.raises(ValueError, match="cannot change optim.lr"):
        Trainer.resume(tmp_path / "b", overrides=["optim.lr=0.1"], train_dataset=shapes_dataset())
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        Trainer(tiny_train_config(tmp_path / "b"), train_dataset=shapes_dataset())


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(tmp_path: Path) -> None:
    dataset = PoisonedDataset(shapes_dataset())
    config = tiny_train_config(tmp_path, run={"checkpoint_every": 2, "log_every": 1})
    trainer = Trainer(config, train_dataset=dataset)
    trainer._batches = _poison_after(trainer._batches, dataset, good_steps=3)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4.*step-00000002.*--resume"):
        trainer.train()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.step == 2 and all(torch.isfinite(w).all() for w in checkpoint.weights().values())
    assert all(torch.isfinite(p).all() for p in trainer.model.decoder.parameters())  # the bad step was not applied
    assert not (tmp_path / "model").exists()


def _poison_after(make_batches, dataset: PoisonedDataset, good_steps: int):
    def batches():
        for step, batch in enumerate(make_batches()):
            if step == good_steps - 1:
                dataset.poisoned = True  # the loader reads ahead of nothing with num_workers=0
            yield batch

    return batches


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    single = Trainer(tiny_train_config(tmp_path / "single", model={"dropout": 0.0}), train_dataset=shapes_dataset())
    single.train()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result_file = tmp_path / "ddp_decoder.pt"
    mp.spawn(distributed_worker, args=(2, port, str(tmp_path / "ddp"), str(result_file)), nprocs=2)
    distributed = torch.load(result_file, weights_only=True)
    # Each rank's half batch rounds differently, and Adam turns gradients that are zero in exact arithmetic (the
    # attention's key bias) into ±lr steps of noise: ~4e-5 after 6 steps at lr 1e-3. Ranks that did not share
    # gradients would drift apart by up to lr (1e-3) per step.
    for name, value in single.model.decoder.state_dict().items():
        torch.testing.assert_close(distributed[name], value, atol=2e-4, rtol=0, msg=name)
    assert read_checkpoint(tmp_path / "ddp").metadata["world_size"] == 2
    assert len(read_checkpoint(tmp_path / "ddp").training_state()["rng"]) == 2


def test_exported_model_loads_and_validation_is_logged(tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path, optim={"max_iterations": 2}, run={"val_every": 1, "val_batch_size": 8})
    validation_data = shapes_dataset(6, seed=1, with_visual=False)
    result = Trainer(config, train_dataset=shapes_dataset(), val_dataset=validation_data).train()
    assert result.model_dir == tmp_path / "model"
    assert result.validation.samples == len(validation_data) and 0 <= result.validation.scores.ap <= 1
    loaded = clipseg.load_model(result.model_dir)
    assert loaded.config.image_size == 32  # trained at 32 px: the exported model is run at 32 px by default
    batch = next(iter(torch.utils.data.DataLoader(validation_data, batch_size=3)))
    conditional = loaded.encode_text(loaded.tokenizer(list(batch["text"])).ids)
    assert loaded(batch["image"], conditional).shape == (3, 1, 32, 32)
    validations = [r for r in _jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "validation"]
    assert [r["step"] for r in validations] == [1, 2]
    assert 0 <= validations[-1]["fgiou_best"] <= 1 and 0 <= validations[-1]["ap"] <= 1
    assert (tmp_path / "validation.csv").read_text().startswith("step,loss,ap,fgiou_best")


def test_cli_trains_on_phrasecut_format_data_and_resumes(tmp_path: Path) -> None:
    import typer

    from clipseg.data.synthetic import write_phrasecut
    from clipseg.training.cli import train

    root = write_phrasecut(tmp_path / "data", 6, size=(32, 40))
    config = tiny_train_config(tmp_path / "run", data={"root": str(root), "val": "val"}, optim={"max_iterations": 2})
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(config.to_yaml())
    app = typer.Typer()
    app.command()(train)
    app.command("other")(lambda: None)  # a second command keeps typer from collapsing the app into `train`
    runner = CliRunner()

    done = runner.invoke(app, ["train", str(config_path), "--set", "run.checkpoint_every=1"])
    assert done.exit_code == 0, done.output
    assert "done: step 2" in done.output
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000001", "step-00000002"]
    assert clipseg.load_model(tmp_path / "run" / "model").config.decoder.extract_layers == (1,)

    refused = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--set", "optim.lr=0.5"])
    assert refused.exit_code == 1 and "cannot change optim.lr" in refused.output
    missing = runner.invoke(app, ["train"])
    assert missing.exit_code == 2 and "--resume" in missing.output


@pytest.mark.parametrize("data_format", ["phrasecut", "coco", "folder"])
def test_datasets_are_built_from_every_data_format(tmp_path: Path, data_format: str) -> None:
    from clipseg.data import synthetic
    from clipseg.training.config import DataSettings
    from clipseg.training.data import build_training_dataset, build_validation_dataset

    writers = {"phrasecut": synthetic.write_phrasecut, "coco": synthetic.write_coco, "folder": synthetic.write_folder}
    root = writers[data_format](tmp_path / "train", 10, size=(32, 40))
    val = "val" if data_format == "phrasecut" else str(writers[data_format](tmp_path / "val", 2, seed=1, size=(32, 40)))
    settings = DataSettings(format=data_format, root=str(root), val=val, image_size=32)
    sample = build_training_dataset(settings, seed=0)[0]
    assert sample["image"].shape == (3, 32, 32) and sample["target"].shape == (1, 32, 32)
    assert isinstance(sample["text"], str) and 0 <= sample["text_weight"] <= 1
    validation = build_validation_dataset(settings, seed=0)
    assert all(validation[i]["text_weight"] == 1.0 for i in range(len(validation)))
    assert build_validation_dataset(DataSettings(format=data_format, root=str(root)), seed=0) is None


def test_models_start_from_pretrained_clip_or_a_clipseg_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from clipseg.testing import random_model, tiny_config
    from clipseg.training.config import ModelSettings
    from clipseg.training.model import build_model

    clip_model = random_model(tiny_config(), seed=1)
    # OpenAI's layout: visual.* as ours, the text tower's keys at the top level.
    openai_state = {k.removeprefix("text."): v for k, v in clip_model.state_dict().items() if not k.startswith("decoder.")}
    clip_file = tmp_path / "clip.safetensors"
    save_file(openai_state, clip_file)
    decoder = {"decoder": {"reduce_dim": 16, "heads": 4, "mlp_width": 64, "extract_layers": [1, 3]}}
    settings = ModelSettings(clip=str(clip_file), architecture=decoder)
    model = build_model(settings, seed=0)
    assert model.config.vision == tiny_config().vision and model.config.decoder.extract_layers == (1, 3)
    for name, value in clip_model.state_dict().items():
        if not name.startswith("decoder."):
            assert torch.equal(model.state_dict()[name], value), name
    same_seed, other_seed = build_model(settings, seed=0), build_model(settings, seed=1)
    assert torch.equal(same_seed.decoder.film_mul.weight, model.decoder.film_mul.weight)
    assert not torch.equal(other_seed.decoder.film_mul.weight, model.decoder.film_mul.weight)
    with pytest.raises(ValueError, match="vision/text settings need model.clip: random"):
        build_model(ModelSettings(clip=str(clip_file), architecture={"vision": {"layers": 2}}), seed=0)

    # Fine-tuning: start from a whole saved model, decoder included.
    clip_model.save_pretrained(tmp_path / "pretrained")
    config = tiny_train_config(tmp_path / "finetune", model={"init": str(tmp_path / "pretrained"), "architecture": {}},
                         data={"image_size": 64}, optim={"max_iterations": 2, "batch_size": 2})
    dataset = PhraseCutPlus(ShapesSource(4, size=64), image_size=64)
    trainer = Trainer(config, train_dataset=dataset)
    assert torch.equal(trainer.model.decoder.film_mul.weight, clip_model.decoder.film_mul.weight)
    trainer.train()
    assert not torch.equal(trainer.model.decoder.film_mul.weight, clip_model.decoder.film_mul.weight)
    with pytest.raises(ValueError, match="cannot be combined with model.init"):
        build_model(ModelSettings(init=str(tmp_path / "pretrained"), architecture=decoder), seed=0)

    # Resuming on other frozen weights is refused.
    other = random_model(tiny_config(), seed=2)
    other.decoder.load_state_dict(clip_model.decoder.state_dict())
    other.save_pretrained(tmp_path / "pretrained")
    with pytest.raises(ValueError, match="frozen CLIP weights differ"):
        Trainer.resume(tmp_path / "finetune", train_dataset=dataset)


def test_precision_settings_and_optional_outputs(tmp_path: Path) -> None:
    bf16 = tiny_train_config(tmp_path / "bf16", optim={"max_iterations": 2, "precision": "bf16"}, run={"progress": True})
    result = Trainer(bf16, train_dataset=shapes_dataset()).train()  # bf16 autocast on the CPU, with a progress bar
    assert np.isfinite(result.loss) and result.loss > 0
    exported = clipseg.load_model(result.model_dir)  # bf16 autocast trains fp32 weights, which export as fp32
    assert all(p.dtype == torch.float32 for p in exported.decoder.parameters())
    with pytest.raises(ValueError, match="fp16 needs a GPU; use bf16"):
        Trainer(tiny_train_config(tmp_path / "fp16", optim={"precision": "fp16"}), train_dataset=shapes_dataset())
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        board = tiny_train_config(tmp_path / "board", run={"tensorboard": True})
        with pytest.raises(RuntimeError, match="pip install tensorboard"):
            Trainer(board, train_dataset=shapes_dataset()).train()


def test_original_sample_order_keeps_images_together_and_repeats_every_epoch() -> None:
    """Released training: the PhraseCut loader shuffles image ids once, lists each image's phrases together, and
    the DataLoader never reshuffles; so every epoch sees the same order with an image's samples adjacent."""
    groups = ["a", "a", "b", "c", "c", "c", "d", "e", "e", "f"]
    sampler = GlobalBatchSampler(10, 5, seed=4, order="original", groups=groups)
    first, second = sampler.permutation(0).tolist(), sampler.permutation(1).tolist()
    assert first == second and sorted(first) == list(range(10))
    runs = [groups[i] for k, i in enumerate(first) if k == 0 or groups[first[k - 1]] != groups[i]]
    assert sorted(runs) == sorted(set(groups))  # each image appears as one contiguous run
    for image in set(groups):  # in dataset order within the image
        members = [i for i in first if groups[i] == image]
        assert members == sorted(members)
    others = [GlobalBatchSampler(10, 5, seed=s, order="original", groups=groups).permutation(0).tolist() for s in range(6)]
    assert len({tuple(o) for o in others}) > 1  # the image order depends on the seed
    shuffled = GlobalBatchSampler(10, 5, seed=4, order="shuffle")
    assert shuffled.permutation(0).tolist() != shuffled.permutation(1).tolist()
    assert GlobalBatchSampler(10, 5, order="sequential").permutation(3).tolist() == list(range(10))
    assert TrainConfig().data.order == "original"
    with pytest.raises(ValueError, match="data.order must be one of original, shuffle, sequential"):
        GlobalBatchSampler(10, 5, order="random")
