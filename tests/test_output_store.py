"""`clipseg segment -o URI` (and `--manifest URI`) with the local engine: a file:// folder and a local S3 server get
the bytes a plain folder gets; resume, confinement and bad URIs. No Ray needed (test_ray_engine.py runs the Ray
engine onto URIs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from batch_fixtures import (  # noqa: F401 (fixtures: model_dir, pixel_limit_restored)
    make_collection,
    model_dir,
    output_files,
    pixel_limit_restored,
)
from s3_fixtures import free_port, s3_endpoint, s3_files, s3_uri  # noqa: F401 (fixture: s3_endpoint)
from typer.testing import CliRunner

from clipseg import cli

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install 'clipseg[ray]')")

from clipseg.batch.store import OutputStore  # noqa: E402 (after the skip)

runner = CliRunner()
PROMPTS = ["-p", "a round thing", "-p", "a square"]
FORMATS = ["-f", "mask", "-f", "overlay", "-f", "rle"]


def segment(*args: object):
    return runner.invoke(cli.app, ["segment", *map(str, args)])


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    make_collection(root, 5, bad=False)
    return root


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, collection, model_dir) -> Path:
    """The reference: a plain local -o, with a manifest beside it."""
    out = tmp_path_factory.mktemp("local") / "out"
    result = segment(collection, *PROMPTS, *FORMATS, "-o", out, "--model", model_dir,
                     "--manifest", out.parent / "manifest.parquet")
    assert result.exit_code == 0, result.output
    return out


def test_file_uri_gets_the_local_folders_bytes_and_resumes(tmp_path, collection, model_dir, local_run):
    out = tmp_path / "out"
    manifest = tmp_path / "runs" / "manifest.parquet"
    args = [collection, *PROMPTS, *FORMATS, "-o", out.as_uri(), "--model", model_dir, "--manifest", manifest.as_uri()]
    result = segment(*args)
    assert result.exit_code == 0, result.output
    expected = output_files(local_run)
    assert len(expected) == 5 * (2 * 2 + 1)
    assert output_files(out) == expected
    # The `mask` column is relative to -o, whatever -o is.
    assert pq.read_table(manifest).equals(pq.read_table(local_run.parent / "manifest.parquet"))

    # Resume: the files that exist are skipped (not rewritten), the missing ones are written again.
    removed = sorted(out.rglob("*__a_square.png"))[:2]
    for path in removed:
        path.unlink()
    kept = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}
    again = segment(*args)
    assert again.exit_code == 0, again.output
    assert output_files(out) == expected
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert pq.read_table(manifest).num_rows == 5 * 2  # every image x prompt once
    assert not [path for path in tmp_path.rglob(".*") if path.is_file()]  # no temporary, no lock, no parts left


def test_s3_output_gets_the_local_folders_bytes_and_resumes(s3_endpoint, collection, model_dir, local_run):
    out, manifest = s3_uri(s3_endpoint, "local/masks"), s3_uri(s3_endpoint, "local/runs/manifest.parquet")
    args = [collection, *PROMPTS, *FORMATS, "-o", out, "--model", model_dir, "--manifest", manifest]
    result = segment(*args)
    assert result.exit_code == 0, result.output
    assert "testing:testing" not in result.output  # credentials in a URI are never printed
    expected = output_files(local_run)
    assert s3_files(s3_endpoint, "local/masks") == expected
    assert pq.read_table(manifest).equals(pq.read_table(local_run.parent / "manifest.parquet"))
    assert list(s3_files(s3_endpoint, "local/runs")) == ["manifest.parquet"]

    store = OutputStore.open(out)
    removed = store.root / sorted(expected)[0]
    store.delete(removed)
    before = {name: store.state(store.root / name) for name in expected}
    again = segment(*args)
    assert again.exit_code == 0, again.output
    assert s3_files(s3_endpoint, "local/masks") == expected
    after = {name: store.state(store.root / name) for name in expected}
    assert [name for name in expected if after[name] != before[name]] == [sorted(expected)[0]]  # only it rewritten


def test_segment_dataset_onto_s3_keeps_its_manifest_there(s3_endpoint, collection, model_dir):
    import clipseg.batch

    image = collection / "img01.png"
    table = clipseg.batch.segment_dataset([image], ["a cup"], s3_uri(s3_endpoint, "api/masks"), engine="local",
                                          model=str(model_dir))
    assert table.column("mask").to_pylist() == ["img01__a_cup.png"]
    assert sorted(s3_files(s3_endpoint, "api/masks")) == ["img01__a_cup.png", "manifest.parquet"]


@pytest.mark.parametrize(
    ("target", "status", "expected"),
    [
        ("nosuch://bucket/masks", 2, "nosuch://bucket/masks: not a location pyarrow can open"),
        ("s3://?region=us-east-1", 2, "s3://?region=us-east-1: name a folder"),
        ("{file}", 1, "cannot write to output folder file://"),  # a regular file where the folder should be
        ("s3://key:SECRET@bucket/masks?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1", 1,
         "cannot write to output folder s3://bucket/masks?endpoint_override=127.0.0.1:"),  # nobody listens
    ],
)
def test_bad_output_uris_are_one_line(tmp_path, collection, model_dir, target, status, expected):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = target.format(file=(blocker / "masks").as_uri(), port=free_port())
    result = segment(collection, *PROMPTS, "-o", target, "--model", model_dir)
    assert result.exit_code == status, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: -o {expected}" if status == 2
                                                                         else f"error: {expected}")
    assert "Traceback" not in result.output and "SECRET" not in result.output


def test_manifest_uri_problems_and_watch_onto_a_uri_are_one_line(tmp_path, collection, model_dir):
    bad = segment(collection, *PROMPTS, "-o", tmp_path / "out", "--model", model_dir, "--manifest", "nosuch://b/m.pq")
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: --manifest nosuch://b/m.pq: not a location pyarrow can open (")
    closed = f"endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=us-east-1"
    unreachable = segment(collection, *PROMPTS, "-o", tmp_path / "out", "--model", model_dir,
                          "--manifest", f"s3://key:SECRET@bucket/m.parquet?{closed}")
    assert unreachable.exit_code == 1 and unreachable.stderr.count("\n") == 1, unreachable.output
    assert unreachable.stderr.startswith(f"error: --manifest s3://bucket/m.parquet?{closed}: ")
    assert "SECRET" not in unreachable.output and "Traceback" not in unreachable.output
    watch = segment(collection, *PROMPTS, "-o", "s3://bucket/masks?region=us-east-1", "--watch", "--model", model_dir)
    assert watch.exit_code == 2
    assert watch.stderr == "error: --watch writes to a local folder, not to s3://bucket/masks?region=us-east-1\n"


def test_outputs_stay_inside_the_folder(tmp_path, collection, model_dir):
    out = tmp_path / "deep" / "out"
    result = segment(collection / "img00.jpg", "-p", "../../../escape", "-p", "..", "-o", out.as_uri(),
                     "--model", model_dir)
    assert result.exit_code == 0, result.output
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file()) == [
        "deep/out/img00__escape.png", "deep/out/img00__prompt.png"]
    store = OutputStore.open(out.as_uri())
    for outside in (out / ".." / "x.png", tmp_path / "x.png", out):
        with pytest.raises(ValueError, match="not a file inside the output folder"):
            store.write(outside, b"data")
    assert not (tmp_path / "deep" / "x.png").exists() and not (tmp_path / "x.png").exists()
