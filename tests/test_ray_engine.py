"""`clipseg segment --engine ray` on a local Ray cluster that this module starts once and stops at the end.

The cluster is small (2 CPUs, no dashboard, a small object store); the CLI joins it in-process (an existing
`ray.init`) or from a subprocess (`--ray-address`). Every check compares with `--engine local` on the same images.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
from s3_fixtures import s3_endpoint, s3_files, s3_uri  # noqa: F401 (fixture: s3_endpoint)
from typer.testing import CliRunner

from clipseg import cli

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'clipseg[ray]'): the Ray engine is untested")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'clipseg[ray]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install 'clipseg[ray]')")

runner = CliRunner()
PROMPTS = ["-p", "a round thing", "-p", "a square"]
FORMATS = [arg for fmt in ("mask", "soft", "heatmap", "overlay", "cutout", "rle") for arg in ("-f", fmt)]
# Keep Ray light: no usage reporting, no log de-duplication delays, a small object store.
RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


@pytest.fixture(scope="module")
def ray_address():
    previous = {key: os.environ.get(key) for key in RAY_ENVIRONMENT}
    os.environ.update(RAY_ENVIRONMENT)
    context = ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 1024**2,
        log_to_driver=False,
        logging_level="ERROR",
    )
    node = ray._private.worker._global_node
    started = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
    try:
        yield context.address_info["gcs_address"]
    finally:
        pids = _with_descendants(started)  # the raylet's agents and workers too
        ray.shutdown()
        for key, value in previous.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)
        assert not [pid for pid in pids if _alive(pid)], "Ray processes survived ray.shutdown()"


def _with_descendants(pids: list[int]) -> list[int]:
    if not Path("/proc").is_dir():  # Linux only; elsewhere the processes Ray lists itself
        return pids
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = set(pids)
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return sorted(found)
        found |= more


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        if not Path("/proc").is_dir():
            return True
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead, only not yet reaped
            return stat.read().rsplit(") ", 1)[1][0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    make_collection(root, 22)
    return root


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, collection, model_dir) -> Path:
    """The reference: `--engine local` with every output format and a manifest."""
    out = tmp_path_factory.mktemp("local") / "out"
    result = segment(collection, *PROMPTS, *FORMATS, "-o", out, "--model", model_dir, "--max-pixels", MAX_PIXELS,
                     "--manifest", out.parent / "manifest.parquet")
    assert result.exit_code == 1, result.output  # the three bad files
    return out


def segment(*args: object):
    return runner.invoke(cli.app, ["segment", *map(str, args)])


def test_ray_writes_the_local_engines_bytes_and_manifest(tmp_path, ray_address, collection, model_dir, local_run):
    out = tmp_path / "out"
    manifest = tmp_path / "manifest.parquet"
    result = segment(collection, *PROMPTS, *FORMATS, "-o", out, "--model", model_dir, "--max-pixels", MAX_PIXELS,
                     "--manifest", manifest, "--engine", "ray", "--batch-size", "3")
    assert result.exit_code == 1, result.output
    for name, reason in [("broken.jpg", "truncated or corrupt"), ("notes.png", "not an image file"),
                         (BOMB_NAME, "decompression-bomb limit")]:
        assert any(line.startswith(f"error: {collection / name}: ") and reason in line
                   for line in result.output.splitlines())
    expected = output_files(local_run)
    assert len(expected) == 22 * (2 * 5 + 1)
    assert output_files(out) == expected  # same names, same bytes
    ray_table, local_table = pq.read_table(manifest), pq.read_table(local_run.parent / "manifest.parquet")
    assert ray_table.num_rows == 22 * 2 + 3
    assert ray_table.equals(local_table)  # the manifest's contents are checked in test_manifest.py


def test_killed_ray_run_resumes_to_the_same_files_and_one_row_each(tmp_path, ray_address, collection, model_dir,
                                                                   local_run):
    out = tmp_path / "out"
    manifest = tmp_path / "manifest.parquet"
    good = sorted(collection.rglob("img*"))
    command = [sys.executable, "-c", "from clipseg.cli import main; main()", "segment", str(collection), *PROMPTS,
               "-f", "mask", "-f", "overlay", "-o", str(out), "--model", str(model_dir), "--batch-size", "1",
               "--max-pixels", str(MAX_PIXELS),
               "--engine", "ray", "--ray-address", ray_address, "--workers", "1", "--manifest", str(manifest)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and len(list(out.glob("*.png"))) < 6:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    done = [path for path in out.rglob("*") if path.is_file() and not path.name.startswith(".")]
    assert 0 < len(done) < 22 * 4
    for path in done:
        Image.open(path).load()  # every visible file is complete

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr[-2000:]  # the three bad files, again
    expected = {name: data for name, data in output_files(local_run).items() if name.endswith((".png", ".jpg"))
                and ("soft" not in name and "heatmap" not in name and "cutout" not in name)}
    assert output_files(out, skip=("manifest.parquet",)) == expected  # nothing lost, nothing extra
    assert not [path for path in out.rglob(".*") if path.is_file()]  # no temporary left
    rows = pq.read_table(manifest).to_pylist()
    keys = [(row["image"], row["prompt"]) for row in rows]
    bad = [(str(collection / name), None) for name in ("broken.jpg", "notes.png", BOMB_NAME)]
    prompts = ("a round thing", "a square")
    assert sorted(keys, key=str) == sorted([(str(path), p) for path in good for p in prompts] + bad, key=str)
    assert not (tmp_path / ".manifest.parquet.parts").exists()


def test_manifest_in_with_file_uris_on_ray(tmp_path, ray_address, collection, model_dir, local_run):
    good = sorted(collection.glob("img*"))[:4]
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"{path.as_uri()}\n" for path in good))
    out = tmp_path / "out"
    result = segment("--manifest-in", listing, *PROMPTS, "-f", "mask", "-o", out, "--model", model_dir,
                     "--engine", "ray", "--manifest", tmp_path / "m.parquet")
    assert result.exit_code == 0, result.output
    expected = {name: data for name, data in output_files(local_run).items()
                if name.endswith(("__a_round_thing.png", "__a_square.png")) and "/" not in name
                and name.split("__")[0] in {path.stem for path in good}}
    assert output_files(out) == expected
    images = pq.read_table(tmp_path / "m.parquet").column("image").to_pylist()
    assert images == [path.as_uri() for path in good for _ in range(2)]  # the sources as given


def test_ray_matches_local_with_tiles_refinement_and_alpha_matting(tmp_path, ray_address, model_dir):
    """Issue 15's options (tiled inference, guided refinement, matted cut-outs) built in the actors give the local
    engine's bytes."""
    images = tmp_path / "images"
    make_collection(images, 4, bad=False)
    options = [*PROMPTS, "-f", "mask", "-f", "soft", "-f", "cutout", "--tiles", "--refine", "guided",
               "--alpha-matting", "--model", model_dir, "--batch-size", "2"]
    local = segment(images, *options, "-o", tmp_path / "local")
    assert local.exit_code == 0, local.output
    on_ray = segment(images, *options, "-o", tmp_path / "ray", "--engine", "ray")
    assert on_ray.exit_code == 0, on_ray.output
    expected = output_files(tmp_path / "local")
    assert len(expected) == 4 * 2 * 3
    assert output_files(tmp_path / "ray") == expected


def test_ray_writes_the_local_bytes_to_a_file_uri(tmp_path, ray_address, collection, model_dir, local_run):
    """(Resume onto a URI is the driver's work, the same for both engines: test_output_store.py checks it.)"""
    out = tmp_path / "out"
    result = segment(collection, *PROMPTS, "-f", "mask", "-f", "rle", "-o", out.as_uri(), "--model", model_dir,
                     "--max-pixels", MAX_PIXELS, "--engine", "ray", "--manifest", (tmp_path / "m.parquet").as_uri())
    assert result.exit_code == 1, result.output  # the three bad files
    expected = {name: data for name, data in output_files(local_run).items()
                if name.endswith((".rle.json", "__a_round_thing.png", "__a_square.png"))}
    assert len(expected) == 22 * 3
    assert output_files(out) == expected
    # The same rows; `mask` names the file relative to -o.
    assert pq.read_table(tmp_path / "m.parquet").equals(pq.read_table(local_run.parent / "manifest.parquet"))


def test_ray_writes_the_local_bytes_to_s3(ray_address, s3_endpoint, collection, model_dir, local_run):
    """The actors write to a local S3 server (moto) through the URI alone: endpoint and credentials travel in it."""
    out, manifest = s3_uri(s3_endpoint, "ray/masks"), s3_uri(s3_endpoint, "ray/manifest.parquet")
    result = segment(collection, *PROMPTS, "-f", "mask", "-f", "overlay", "-o", out, "--model", model_dir,
                     "--max-pixels", MAX_PIXELS, "--engine", "ray", "--manifest", manifest)
    assert result.exit_code == 1, result.output
    expected = {name: data for name, data in output_files(local_run).items()
                if name.endswith(("__a_round_thing.png", "__a_square.png", ".overlay.jpg"))}
    assert len(expected) == 22 * 4
    assert s3_files(s3_endpoint, "ray/masks") == expected
    assert pq.read_table(manifest).equals(pq.read_table(local_run.parent / "manifest.parquet"))


def test_a_killed_model_actor_is_replaced_and_the_run_ends_complete(tmp_path, ray_address, collection, model_dir,
                                                                    local_run):
    """SIGKILL the process of the model actor part-way: Ray restarts the actor and retries its batch, and the run
    ends with every output once, none lost, no partial file, one manifest row per image x prompt."""
    if not Path("/proc").is_dir():
        pytest.skip("finds the actor's process in /proc (Linux)")
    out = tmp_path / "out"
    manifest = tmp_path / "manifest.parquet"
    command = [sys.executable, "-c", "from clipseg.cli import main; main()", "segment", str(collection), *PROMPTS,
               "-f", "mask", "-f", "overlay", "-o", str(out), "--model", str(model_dir), "--batch-size", "1",
               "--max-pixels", str(MAX_PIXELS),
               "--engine", "ray", "--ray-address", ray_address, "--workers", "1", "--manifest", str(manifest)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None and len(list(out.glob("*.png"))) < 6:
            time.sleep(0.05)
        actors = _model_actor_pids()
        assert len(actors) == 1, f"expected one model actor, found {actors}: {_ray_process_titles()}"
        os.kill(actors[0], signal.SIGKILL)
        written = len(list(out.rglob("*.png")))
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 1, stderr[-2000:]  # the three bad files
    assert written < 22 * 2, "the actor was killed after the run had finished"
    assert actors[0] not in _model_actor_pids()
    expected = {name: data for name, data in output_files(local_run).items()
                if name.endswith(("__a_round_thing.png", "__a_square.png", ".overlay.jpg"))}
    assert output_files(out) == expected  # nothing lost, nothing extra, every file whole
    assert not [path for path in out.rglob(".*") if path.is_file()]  # no temporary left
    keys = [(row["image"], row["prompt"]) for row in pq.read_table(manifest).to_pylist()]
    assert len(keys) == len(set(keys)) == 22 * 2 + 3
    assert "segmented" in stdout


def _ray_process_titles() -> dict[int, str]:
    """pid -> process title of this machine's Ray worker processes ("ray::..."), Linux /proc."""
    titles = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode("utf-8", "replace")
            except OSError:
                continue
            if title.startswith("ray::"):
                titles[int(entry.name)] = title
    return titles


def _model_actor_pids() -> list[int]:
    """The processes of the model actors (Ray Data names an actor pool's workers MapWorker(...)); Ray titles an
    actor's process after the actor's class."""
    return sorted(pid for pid, title in _ray_process_titles().items() if "MapWorker" in title and _alive(pid))
