"""The run manifest (`--manifest`) and image lists (`--manifest-in`) with the local engine; no Ray needed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from batch_fixtures import (  # noqa: F401 (fixtures: model_dir, pixel_limit_restored)
    BOMB_NAME,
    MAX_PIXELS,
    make_collection,
    model_dir,
    output_files,
    pixel_limit_restored,
)
from PIL import Image
from pycocotools import mask as coco_mask
from typer.testing import CliRunner

import clipseg
from clipseg import cli

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'clipseg[ray]')")
pq = pytest.importorskip("pyarrow.parquet")

from clipseg.batch.manifest import COLUMNS, ManifestWriter, success_row  # noqa: E402 (after the skip)

runner = CliRunner()
PROMPTS = ("a round thing", "a square")


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    make_collection(root, 6)
    return root


def segment(*args: object):
    return runner.invoke(cli.app, ["segment", *map(str, args)])


def prompt_args() -> list[str]:
    return [arg for prompt in PROMPTS for arg in ("-p", prompt)]


def check_manifest(table: pa.Table, out: Path, sources: list[str], failed: dict[str, str], model: Path) -> None:
    """Every fact of the manifest, checked against the written files and the images themselves."""
    assert tuple(table.column_names) == COLUMNS
    rows = table.to_pylist()
    keys = [(row["image"], row["prompt"]) for row in rows]
    assert len(keys) == len(set(keys))  # every image x prompt once
    assert sorted(keys) == sorted(
        [(source, prompt) for source in sources for prompt in PROMPTS] + [(source, None) for source in failed]
    )
    for row in rows:
        assert row["model"] == str(model) and row["clipseg_version"] == clipseg.__version__
        if row["image"] in failed:
            assert failed[row["image"]] in row["error"] and "\n" not in row["error"]
            assert row["mask"] is row["rle"] is row["area"] is None
            continue
        assert row["error"] is None and row["threshold"] == 0.4
        with Image.open(row["image"].removeprefix("file://")) as image:
            assert (row["width"], row["height"]) == image.size
        mask = np.asarray(Image.open(out / row["mask"])) > 0
        decoded = coco_mask.decode({"size": [row["height"], row["width"]], "counts": row["rle"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), mask)
        assert row["area"] == int(mask.sum())
        soft = np.asarray(Image.open(out / row["mask"].replace(".png", ".soft.png")), dtype=np.float64) / 255.0
        expected = soft[mask].mean() if mask.any() else 0.0
        assert row["mean_probability"] == pytest.approx(expected, abs=0.5 / 255 + 1e-6)


def test_local_manifest_lists_every_image_and_prompt_and_survives_a_resume(tmp_path, collection, model_dir):
    out = tmp_path / "out"
    manifest = tmp_path / "run.parquet"
    args = [collection, *prompt_args(), "-f", "mask", "-f", "soft", "-o", out, "--model", model_dir]
    args += ["--max-pixels", MAX_PIXELS, "--manifest", manifest]
    first = segment(*args)
    assert first.exit_code == 1, first.output  # the bad files fail; everything else is done
    table = pq.read_table(manifest)
    good = sorted(str(p) for p in collection.rglob("img*"))
    failed = {
        str(collection / "broken.jpg"): "truncated or corrupt",
        str(collection / "notes.png"): "not an image file",
        str(collection / BOMB_NAME): "decompression-bomb limit",
    }
    check_manifest(table, out, good, failed, model_dir)
    assert not list(tmp_path.glob(".run.parquet.parts"))
    files = output_files(out)

    # A killed run leaves part files and missing outputs: turn the manifest into such a part and delete outputs.
    parts = tmp_path / ".run.parquet.parts"
    parts.mkdir()
    shutil.move(manifest, parts / "part-00000000000000000001-1-000001.parquet")
    (out / "img00__a_square.png").unlink()
    (out / "sub" / "img02__a_round_thing.soft.png").unlink()
    second = segment(*args)
    assert second.exit_code == 1, second.output
    assert "segmented" in second.stdout
    resumed = pq.read_table(manifest)
    check_manifest(resumed, out, good, failed, model_dir)
    assert resumed.equals(table)  # same rows in the same order
    assert output_files(out) == files
    assert not parts.exists()

    # Nothing left to do: the manifest is rewritten from itself, unchanged.
    third = segment(*args)
    assert third.exit_code == 1 and pq.read_table(manifest).equals(table)


def test_manifest_writer_keeps_the_newest_rows_of_each_image(tmp_path):
    path = tmp_path / "m.parquet"

    def row(image: str, prompt: str, area: int) -> dict:
        annotation = {"segmentation": {"counts": "x"}, "area": area, "score": 0.5, "threshold": 0.4}
        return success_row(image, prompt, f"{image}.png", annotation, 4, 3, model="m")

    killed = ManifestWriter(path, ["p", "q"], model="m")
    killed.add([row("a", "p", 1), row("a", "q", 2)])
    killed.add([killed.failure("b", "broken")])
    killed.flush()  # a run killed here leaves only its parts
    resumed = ManifestWriter(path, ["p", "q"], model="m", threshold=0.4)
    assert resumed.finished("a") and not resumed.finished("b") and not resumed.finished("c")
    resumed.add([row("b", "p", 3), row("b", "q", 4)])  # b succeeds this time: its failure row goes
    table = resumed.close(["c", "b", "a"])  # c was planned but never ran: no rows
    assert [(r["image"], r["prompt"], r["area"], r["error"]) for r in table.to_pylist()] == [
        ("b", "p", 3, None),
        ("b", "q", 4, None),
        ("a", "p", 1, None),
        ("a", "q", 2, None),
    ]
    # A later run with one prompt fewer: only that prompt's rows remain; "a" counts as finished for it.
    narrower = ManifestWriter(path, ["q"], model="m")
    assert narrower.finished("a")
    assert narrower.close(["a"]).to_pylist() == [table.to_pylist()[3]]
    assert not ManifestWriter(path, ["q"], model="m", resume=False).finished("a")


def test_manifest_in_csv_and_parquet_with_local_paths(tmp_path, collection, model_dir, monkeypatch):
    good = sorted(collection.rglob("img*"))[:3]
    relative = good[0].relative_to(collection).as_posix()
    monkeypatch.chdir(collection)  # relative paths in the list are relative to the working directory
    listing = tmp_path / "list.csv"
    listing.write_text(
        "path,label\n" + f"{relative},x\n{good[1]},y\n\n{good[2].as_uri()},z\n{collection / 'missing.jpg'},w\n"
    )
    out = tmp_path / "out"
    manifest = tmp_path / "m.parquet"
    result = segment("--manifest-in", listing, *prompt_args(), "-o", out, "--model", model_dir, "--manifest", manifest)
    assert result.exit_code == 1, result.output  # missing.jpg
    assert "missing.jpg: no such file" in result.output
    rows = pq.read_table(manifest).to_pylist()
    assert [row["image"] for row in rows[:6:2]] == [relative, str(good[1]), good[2].as_uri()]
    assert rows[-1]["image"] == str(collection / "missing.jpg") and "no such file" in rows[-1]["error"]
    names = {f"{path.stem}__{slug}.png" for path in good for slug in ("a_round_thing", "a_square")}
    assert set(output_files(out)) == names  # named after the file, whatever folder or URI it came from

    # The same list as Parquet gives the same masks.
    parquet_list = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": [relative, str(good[1]), good[2].as_uri()]}), parquet_list)
    again = segment("--manifest-in", parquet_list, *prompt_args(), "-o", tmp_path / "again", "--model", model_dir)
    assert again.exit_code == 0, again.output
    assert output_files(tmp_path / "again") == output_files(out)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("name\nimg.jpg\n", "no 'path' column (found: name)"), ("path\n\n", "lists no images")],
)
def test_manifest_in_problems_are_one_line(tmp_path, model_dir, content, expected):
    listing = tmp_path / "list.csv"
    listing.write_text(content)
    result = segment("--manifest-in", listing, "-p", "a", "-o", tmp_path / "out", "--model", model_dir)
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output


def test_credentials_in_a_listed_uri_are_never_printed(tmp_path, model_dir):
    # pyarrow refuses a user:password in a file:// URI and quotes the URI in its own message.
    result = segment("--manifest-in", "file://reader:hunter2@/data/list.csv", "-p", "a", "-o", tmp_path / "out",
                     "--model", model_dir)
    assert result.exit_code != 0 and "file:///data/list.csv" in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output


def test_credentials_in_a_listed_image_uri_are_never_printed(tmp_path, model_dir):
    # A listed image the run cannot read fails on its own line and in the summary, credentials dropped.
    listing = tmp_path / "list.csv"
    listing.write_text("path\nfile://reader:hunter2@/data/cat.jpg\n")
    result = segment("--manifest-in", listing, "-p", "a", "-o", tmp_path / "out", "--model", model_dir)
    assert result.exit_code == 1, result.output
    assert "file:///data/cat.jpg" in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output


def test_engine_options_need_the_ray_engine(tmp_path, collection, model_dir):
    result = segment(collection, "-p", "a", "-o", tmp_path / "out", "--model", model_dir, "--workers", "2")
    assert result.exit_code == 2 and "--engine ray" in result.output


def test_segment_dataset_returns_the_manifest(tmp_path, collection, model_dir):
    from clipseg.batch import segment_dataset

    out = tmp_path / "out"
    good = sorted(collection.glob("img*"))[:2]
    table = segment_dataset([good[0], good[1].as_uri(), collection / "notes.png"], PROMPTS, out, engine="local",
                            model=str(model_dir), formats=["mask", "soft"])
    assert (out / "manifest.parquet").is_file() and pq.read_table(out / "manifest.parquet").equals(table)
    check_manifest(table, out, [str(good[0]), good[1].as_uri()], {str(collection / "notes.png"): "not an image"},
                   model_dir)


def test_ray_engine_without_ray_installed_is_one_line(tmp_path, collection, model_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = segment(collection, "-p", "a", "-o", tmp_path / "out", "--model", model_dir, "--engine", "ray")
    assert result.exit_code == 1
    assert "--engine ray needs Ray Data: pip install 'clipseg[ray]'" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
