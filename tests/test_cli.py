"""The `clipseg` command line, run as a user would: real photos, awkward files, a tiny random model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predictor_fixtures import photo, save_jpeg, save_tiny_model
from pycocotools import mask as coco_mask
from typer.testing import CliRunner

import clipseg
from clipseg import cli
from clipseg.cli import common
from clipseg.predictor import Predictor

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """coffee.jpg (stored sideways, EXIF orientation 6), chelsea.png, sub/astronaut.jpg."""
    root = tmp_path_factory.mktemp("photos")
    save_jpeg(photo("coffee"), root / "coffee.jpg", orientation=6)
    Image.fromarray(photo("chelsea")).save(root / "chelsea.png")
    (root / "sub").mkdir()
    save_jpeg(photo("astronaut"), root / "sub" / "astronaut.jpg", size=(256, 256))
    (root / "notes.txt").write_text("not an image and not picked up from a folder")
    return root


def segment(*args: str | Path):
    return runner.invoke(cli.app, ["segment", *map(str, args)])


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_segment_writes_one_mask_per_image_and_prompt_at_the_displayed_size(tmp_path, photos, model_dir):
    out = tmp_path / "out"
    result = segment(
        photos, "-p", "a cup", "-p", "something to sit on", "-o", out, "--model", model_dir, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == [
        "chelsea__a_cup.png",
        "chelsea__something_to_sit_on.png",
        "coffee__a_cup.png",
        "coffee__something_to_sit_on.png",
        "sub/astronaut__a_cup.png",
        "sub/astronaut__something_to_sit_on.png",
    ]
    coffee_mask = Image.open(out / "coffee__a_cup.png")
    assert coffee_mask.size == (400, 600) and coffee_mask.mode == "L"  # EXIF-rotated 600x400 photo
    assert Image.open(out / "chelsea__a_cup.png").size == (451, 300)
    # The CLI's masks are the predictor's masks at the default threshold 0.4.
    predictor = Predictor(clipseg.load_model(model_dir))
    predictor.set_image(photos / "coffee.jpg")
    expected = predictor.predict(["a cup"]).masks(0.4)[0].numpy()
    saved = np.asarray(coffee_mask)
    assert set(np.unique(saved)) <= {0, 255}
    assert (saved > 0).mean() == pytest.approx(expected.mean(), abs=1e-3)
    assert "segmented" in result.stdout and "3" in result.stdout


def test_every_output_format(tmp_path, photos, model_dir):
    out = tmp_path / "out"
    formats = [arg for fmt in ("mask", "soft", "heatmap", "overlay", "cutout", "rle") for arg in ("-f", fmt)]
    result = segment(photos / "chelsea.png", "-p", "a cat", "-o", out, "--model", model_dir, *formats, "-t", "0.5")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "chelsea.rle.json",
        "chelsea__a_cat.cutout.png",
        "chelsea__a_cat.heatmap.jpg",
        "chelsea__a_cat.overlay.jpg",
        "chelsea__a_cat.png",
        "chelsea__a_cat.soft.png",
    ]
    for name, mode in [("cutout.png", "RGBA"), ("heatmap.jpg", "RGB"), ("overlay.jpg", "RGB"), ("soft.png", "L")]:
        image = Image.open(out / f"chelsea__a_cat.{name}")
        assert (image.size, image.mode) == ((451, 300), mode)
    mask = np.asarray(Image.open(out / "chelsea__a_cat.png")) > 0
    soft = np.asarray(Image.open(out / "chelsea__a_cat.soft.png"))
    clear = (soft < 127) | (soft > 128)  # away from the 8-bit rounding of the threshold
    np.testing.assert_array_equal(mask[clear], soft[clear] > 128)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "chelsea__a_cat.cutout.png"))[..., 3] > 0, mask)
    record = json.loads((out / "chelsea.rle.json").read_text())
    assert (record["height"], record["width"]) == (300, 451)
    (annotation,) = record["annotations"]
    assert annotation["prompt"] == "a cat" and annotation["threshold"] == 0.5
    rle = {"size": annotation["segmentation"]["size"], "counts": annotation["segmentation"]["counts"].encode()}
    np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), mask)


def test_postprocessing_union_and_negative_options(tmp_path, photos, model_dir):
    from clipseg.postprocess import MaskOptions

    out = tmp_path / "out"
    args = [
        photos / "chelsea.png",
        "-p",
        "a cat",
        "-p",
        "a dog",
        "-n",
        "a wall",
        "--union",
        "-o",
        out,
        "--model",
        model_dir,
    ]
    result = segment(
        *args, "-t", "0.25", "--min-area", "50", "--dilate", "3", "--erode", "1", "--invert", "--feather", "2"
    )
    assert result.exit_code == 0, result.output
    (written,) = out.iterdir()
    assert written.name == "chelsea__a_cat_or_a_dog.png"
    predictor = Predictor(clipseg.load_model(model_dir))
    predictor.set_image(photos / "chelsea.png")
    union = predictor.predict(["a cat", "a dog"], negative="a wall").union_probability().numpy()
    alpha = MaskOptions(threshold=0.25, min_area=50, dilate=3, erode=1, invert=True, feather=2).apply(union)
    saved = np.asarray(Image.open(written)).astype(np.int16)
    assert np.abs(saved - np.round(alpha * 255)).max() <= 1
    assert len(np.unique(saved)) > 2  # feathered edges


def test_awkward_inputs_are_reported_one_line_each_and_the_rest_is_done(tmp_path, model_dir, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # --max-pixels changes it in-process
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = save_jpeg(photo("coffee"), inbox / "good.jpg", size=(150, 100))
    Image.new("RGB", (1, 1), (200, 10, 10)).save(inbox / "dot.png")
    (inbox / "zero.jpg").write_bytes(b"")
    (inbox / "cut.jpg").write_bytes(good.read_bytes()[:2000])
    (inbox / "notes.jpg").write_text("hello, I am text\n")
    Image.new("RGB", (300, 300)).save(inbox / "bomb.png")  # over twice --max-pixels (Pillow's error)
    Image.new("RGB", (150, 150)).save(inbox / "big.png")  # between once and twice (Pillow only warns)
    out = tmp_path / "out"
    result = runner.invoke(
        cli.app,
        [
            "segment",
            str(inbox),
            str(tmp_path / "missing.jpg"),
            "-p",
            "a cup",
            "-o",
            str(out),
            "--model",
            str(model_dir),
            "--max-pixels",
            "20000",
        ],
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 6, result.stderr
    for expected in (
        "missing.jpg: no such file or directory",
        "zero.jpg: empty file (0 bytes)",
        "cut.jpg: truncated or corrupt image",
        "notes.jpg: not an image file",
        "bomb.png: image larger than Pillow's decompression-bomb limit of 20,000",
        "big.png: image larger than",
    ):
        assert any(expected in line for line in errors), (expected, errors)
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["dot__a_cup.png", "good__a_cup.png"]
    assert Image.open(out / "dot__a_cup.png").size == (1, 1)
    assert "failed inputs" in result.stdout and "6" in result.stdout


def test_prompt_problems(tmp_path, photos, model_dir):
    out = tmp_path / "out"
    empty = segment(photos / "chelsea.png", "-p", "  ", "-o", out, "--model", model_dir)
    assert empty.exit_code == 2
    assert empty.stderr.strip() == "error: empty prompt: --prompt needs text, e.g. --prompt 'a cup'"
    nothing = segment(photos / "chelsea.png", "-o", out, "--model", model_dir)
    assert nothing.exit_code == 2 and "nothing to segment" in nothing.stderr
    long_prompt = "a very fluffy cat sleeping on a sofa " * 55  # ~2,000 characters
    result = segment(
        photos / "chelsea.png", "-p", long_prompt, "-p", "猫 / ../chat noir", "-o", out, "--model", model_dir
    )
    assert result.exit_code == 0, result.output
    assert "warning: prompt 'a very fluffy cat" in result.stderr and "longer than 77 tokens" in result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and "chelsea__猫_-_-chat_noir.png" in names
    assert all(len(name.encode()) < 200 for name in names)


def test_image_prompt_from_the_command_line(tmp_path, photos, model_dir):
    mask = np.zeros((300, 451), dtype=np.uint8)
    mask[50:250, 100:350] = 255
    Image.fromarray(mask).save(tmp_path / "cat_mask.png")
    support = ["--support", photos / "chelsea.png", "--support-mask", tmp_path / "cat_mask.png"]
    out = tmp_path / "out"
    result = segment(
        photos / "coffee.jpg", *support, "-o", out, "--model", model_dir, "--visual-prompt", "cls_mask_all"
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["coffee__support.png"]
    mixed = segment(
        photos / "coffee.jpg", *support, "-p", "a cat", "--mix", "0.3", "-o", tmp_path / "mixed", "--model", model_dir
    )
    assert mixed.exit_code == 0 and [p.name for p in (tmp_path / "mixed").iterdir()] == ["coffee__a_cat.png"]

    Image.fromarray(mask[:100]).save(tmp_path / "small_mask.png")
    wrong = segment(
        photos / "coffee.jpg",
        "--support",
        photos / "chelsea.png",
        "--support-mask",
        tmp_path / "small_mask.png",
        "-o",
        out,
        "--model",
        model_dir,
    )
    assert (
        wrong.exit_code == 2
        and "small_mask.png is 451x100 but" in wrong.stderr
        and "chelsea.png is 451x300" in wrong.stderr
    )
    Image.fromarray(np.zeros_like(mask)).save(tmp_path / "empty_mask.png")
    empty = segment(
        photos / "coffee.jpg",
        "--support",
        photos / "chelsea.png",
        "--support-mask",
        tmp_path / "empty_mask.png",
        "-o",
        out,
        "--model",
        model_dir,
    )
    assert empty.exit_code == 2 and "empty_mask.png is empty" in empty.stderr
    unpaired = segment(photos / "coffee.jpg", "--support", photos / "chelsea.png", "-o", out, "--model", model_dir)
    assert unpaired.exit_code == 2 and "one mask per support image" in unpaired.stderr
    variant = segment(photos / "coffee.jpg", *support, "--visual-prompt", "glitter", "-o", out, "--model", model_dir)
    assert variant.exit_code == 2 and "unknown visual prompt variant 'glitter'" in variant.stderr


def test_unwritable_output_folder(tmp_path, photos, model_dir):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    result = segment(photos / "chelsea.png", "-p", "a cat", "-o", blocker / "out", "--model", model_dir)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot write to output folder {blocker / 'out'}")
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert segment(photos / "chelsea.png", "-p", "a cat", "-o", locked, "--model", model_dir).exit_code == 1


def test_precision_option(tmp_path, photos, model_dir):
    # The option is honoured when the command writes what the library computes at that precision
    # (`apply_precision`); the soft PNG only adds rounding to 1/255, so nearly equal floats may land one level
    # apart. How far int8/bf16 are from fp32 depends on the random weights, not on the command (a bound on it
    # here was flaky: mean 0.006-0.011 across seeds for int8); tests/test_perf_precision.py bounds that error.
    image = Image.open(photos / "chelsea.png")
    masks = {}
    for precision in ("fp32", "int8", "bf16"):
        out = tmp_path / precision
        args = [photos / "chelsea.png", "-p", "a cat", "-f", "soft", "-o", out, "--model", model_dir]
        result = segment(*args, "--device", "cpu", "--precision", precision)
        assert result.exit_code == 0, result.output
        (path,) = out.glob("*.png")
        masks[precision] = np.asarray(Image.open(path), dtype=np.int16)
        predictor = Predictor(clipseg.apply_precision(clipseg.load_model(model_dir), precision))
        predictor.set_image(image)
        expected = np.round(predictor.predict("a cat").probabilities[0].float().numpy() * 255)
        assert np.abs(masks[precision] - expected).max() <= 1, precision
    # The comparison tells the precisions apart: each changes the written mask.
    assert len({masks[precision].tobytes() for precision in masks}) == 3
    bad = segment(photos / "chelsea.png", "-p", "a cat", "-o", tmp_path / "x", "--model", model_dir, "--precision", "int4")
    assert bad.exit_code == 2 and "int4" in bad.output


def test_missing_model_is_one_line(tmp_path, photos):
    result = segment(photos / "chelsea.png", "-p", "a cat", "-o", tmp_path / "out", "--model", tmp_path / "no_model")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "no_model" in result.stderr and "Traceback" not in result.stderr


def test_resume_after_a_crash_finishes_with_the_same_files(tmp_path, photos, model_dir, monkeypatch):
    reference = tmp_path / "reference"
    args = [photos, "-p", "a cup", "-p", "a cat", "-f", "mask", "-f", "cutout", "--model", model_dir]
    assert segment(*args, "-o", reference).exit_code == 0
    from clipseg.batch.store import OutputStore
    from clipseg.fileio import atomic_write

    real_write = OutputStore.write
    calls = []

    def crash_midway(store, path, data):
        calls.append(path)
        if len(calls) == 5:  # dies while writing the fifth file (the first is the folder's write probe)
            with atomic_write(path) as file:
                file.write(data[: len(data) // 2])
                raise KeyboardInterrupt
        return real_write(store, path, data)

    monkeypatch.setattr(OutputStore, "write", crash_midway)
    out = tmp_path / "out"
    crashed = segment(*args, "-o", out)
    assert crashed.exit_code == 130 and "run the same command again" in crashed.stderr
    partial = files(out)
    assert 0 < len(partial) < len(files(reference))
    assert all(
        reference_bytes == files(reference)[name] for name, reference_bytes in partial.items()
    )  # no partial file
    monkeypatch.setattr(OutputStore, "write", real_write)
    resumed = segment(*args, "-o", out)
    assert resumed.exit_code == 0
    assert files(out) == files(reference)
    # Everything done: nothing is loaded, not even the model (a bogus --model proves it).
    again = segment(
        photos, "-p", "a cup", "-p", "a cat", "-f", "mask", "-f", "cutout", "--model", tmp_path / "gone", "-o", out
    )
    assert again.exit_code == 0 and "skipped" in again.stdout
    overwrite = segment(*args, "-o", out, "--overwrite")
    assert overwrite.exit_code == 0 and files(out) == files(reference)


def test_outputs_inside_the_input_folder_are_not_segmented_again(tmp_path, model_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    save_jpeg(photo("coffee"), folder / "photo.jpg", size=(120, 80))
    Image.fromarray(photo("coffee")[:80, :120]).save(folder / "photo.png")
    for _ in range(2):
        result = segment(folder, "-p", "a cup", "-o", folder / "masks", "--model", model_dir, "--overwrite")
        assert result.exit_code == 0, result.output
    # Same stem, two suffixes: told apart by the suffix.
    assert sorted(p.name for p in (folder / "masks").iterdir()) == ["photo_jpg__a_cup.png", "photo_png__a_cup.png"]
    same = segment(folder, "-p", "a cup", "-o", folder, "--model", model_dir)
    assert same.exit_code == 2 and "is both an input and the output folder" in same.stderr


def test_labels_command(tmp_path, photos, model_dir):
    out = tmp_path / "labels"
    result = runner.invoke(
        cli.app,
        [
            "labels",
            str(photos / "chelsea.png"),
            "-p",
            "cat",
            "-p",
            "sofa",
            "-p",
            "wall",
            "-o",
            str(out),
            "--model",
            str(model_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.labels-overlay.jpg", "chelsea.labels.png", "labels.json"]
    labels = Image.open(out / "chelsea.labels.png")
    assert labels.mode == "P" and labels.size == (451, 300)
    assert set(np.unique(np.asarray(labels))) <= {0, 1, 2, 3}
    legend = json.loads((out / "labels.json").read_text())
    assert [entry["name"] for entry in legend["labels"]] == ["background", "cat", "sofa", "wall"]
    assert runner.invoke(cli.app, ["labels", str(photos), "-o", str(out), "--model", str(model_dir)]).exit_code == 2


def test_info_and_convert(tmp_path, model_dir):
    info = runner.invoke(cli.app, ["info", str(model_dir)])
    assert info.exit_code == 0, info.output
    assert "1, 2, 3" in info.stdout and "refined head" in info.stdout
    destination = tmp_path / "converted"
    mismatch = runner.invoke(cli.app, ["convert", str(model_dir), str(destination), "--extract-layers", "1,3"])
    assert mismatch.exit_code == 1 and mismatch.stderr.count("\n") == 1 and "reads 3" in mismatch.stderr
    converted = runner.invoke(cli.app, ["convert", str(model_dir), str(destination), "--extract-layers", "1,2,3"])
    assert converted.exit_code == 0, converted.output
    assert clipseg.load_model(destination).config == clipseg.load_model(model_dir).config
    refused = runner.invoke(cli.app, ["convert", str(model_dir), str(destination)])
    assert refused.exit_code == 2 and "not empty" in refused.stderr
    bad_layers = runner.invoke(cli.app, ["info", str(model_dir), "--extract-layers", "three"])
    assert bad_layers.exit_code == 2 and "comma-separated" in bad_layers.stderr


def test_debug_shows_tracebacks_of_unexpected_errors(tmp_path, photos, model_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(Predictor, "predict_batch", broken)
    args = [photos / "chelsea.png", "-p", "a cat", "-o", tmp_path / "out", "--model", model_dir]
    quiet = segment(*args)
    assert quiet.exit_code == 1 and "RuntimeError: decoder exploded" in quiet.stderr and "Traceback" not in quiet.stderr
    loud = segment(*args, "--debug")
    assert loud.exit_code == 1 and "Traceback" in loud.stderr


def test_default_model_and_optional_commands(monkeypatch):
    from clipseg.checkpoints.pretrained import DEFAULT_MODEL

    assert common.DEFAULT_MODEL == DEFAULT_MODEL
    fake = types.ModuleType("clipseg.training.cli")

    def train() -> None:
        """Fine-tune a model."""

    fake.train = train
    monkeypatch.setitem(sys.modules, "clipseg.training.cli", fake)
    before = list(cli.app.registered_commands)
    try:
        cli._register_optional_commands()
        names = [command.name for command in cli.app.registered_commands]
        assert "train" in names
    finally:
        cli.app.registered_commands[:] = before


def test_help_is_fast_and_imports_no_heavy_module():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import clipseg.cli"], capture_output=True, text=True, check=True
    )
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "numpy", "PIL", "scipy", "safetensors", "huggingface_hub"}
    help_text = runner.invoke(cli.app, ["segment", "--help"]).stdout
    for option in (
        "--prompt",
        "--negative",
        "--support",
        "--support-mask",
        "--threshold",
        "--format",
        "--model",
        "--device",
        "--batch-size",
        "--overwrite",
    ):
        assert option in help_text


def test_hub_model_from_a_prefilled_offline_cache(tmp_path, photos, model_dir):
    """The default path for users: a hub id resolved through the HF cache, here offline with a pre-filled cache."""
    cache = tmp_path / "hf" / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--tiny-org--clipseg-test" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for path in model_dir.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (cache / "models--tiny-org--clipseg-test" / "refs").mkdir()
    (cache / "models--tiny-org--clipseg-test" / "refs" / "main").write_text(revision)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-c",
        "from clipseg.cli import main; main()",
        "segment",
        str(photos / "chelsea.png"),
        "-p",
        "a cat",
    ]
    ok = subprocess.run(
        [*command, "-o", str(tmp_path / "out"), "--model", "tiny-org/clipseg-test"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "chelsea__a_cat.png").is_file()
    missing = subprocess.run(
        [*command, "-o", str(tmp_path / "out2")], env=env, capture_output=True, text=True
    )  # default model
    assert missing.returncode == 1
    (line,) = missing.stderr.strip().splitlines()
    assert (
        line.startswith("error: CIDAS/clipseg-rd64-refined is not in the Hugging Face cache")
        and "Traceback" not in missing.stderr
    )


def test_killed_run_leaves_no_partial_file_and_a_rerun_completes(tmp_path, model_dir):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(6):
        save_jpeg(photo("astronaut")[index * 10 :], folder / f"img{index:02d}.jpg", size=(128, 120))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-c",
        "from clipseg.cli import main; main()",
        "segment",
        str(folder),
        "-p",
        "a face",
        "-p",
        "a flag",
        "-f",
        "mask",
        "-f",
        "overlay",
        "-o",
        str(out),
        "--model",
        str(model_dir),
        "--batch-size",
        "1",
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(list(out.glob("*.png"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = [p for p in out.glob("*") if not p.name.startswith(".")]
    assert 0 < len(done) < 24
    for path in done:
        Image.open(path).load()  # every visible file is complete
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(out.glob("*"))) == 24  # 6 images x 2 prompts x 2 formats, stale temporaries removed
