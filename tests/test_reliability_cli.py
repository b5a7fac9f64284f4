"""Issue 11, the segment command: a full disk stops the run with one line naming the output, a second run into
the same folder is refused while the first holds it, symlinked subfolders are followed without loops."""

from __future__ import annotations

import re
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import clipseg
from clipseg import cli
from clipseg.fileio import LOCK_NAME, FolderLockedError, folder_lock

SRC = Path(clipseg.__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / f"photo{index}.png")
    return root


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_full_disk_stops_early_naming_the_output_and_counting_what_was_written(
    tmp_path, images, tiny_model_dir, monkeypatch, full_disk_after
):
    calls = full_disk_after(4)  # the disk fills up after the write-test probe and three output files
    output = tmp_path / "out"
    result = runner.invoke(
        cli.app, ["segment", str(images), "-p", "a cat", "-p", "a dog", "-o", str(output), "-m", str(tiny_model_dir)]
    )
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    errors = _error_lines(result.output)
    assert len(errors) == 1, result.output
    assert "No space left on device" in errors[0] and str(output) in errors[0]
    assert "3 files written" in errors[0] and "images not done" in errors[0]
    assert len(calls) == 5  # stopped at the first full-disk error instead of failing every remaining image
    written = sorted(p.name for p in output.iterdir() if not p.name.startswith("."))
    assert len(written) == 3
    assert re.search(r"files written\s*│\s*3\s*│", result.output)


def test_second_run_into_a_locked_folder_is_refused(tmp_path, images, tiny_model_dir):
    output = tmp_path / "out"
    output.mkdir()
    with folder_lock(output):
        result = runner.invoke(cli.app, ["segment", str(images), "-p", "a cat", "-o", str(output), "-m", str(tiny_model_dir)])
    assert result.exit_code == 1
    errors = _error_lines(result.output)
    assert len(errors) == 1 and "another clipseg run is writing to this folder" in errors[0]
    assert not any(output.glob("*.png"))
    # Released: the same command now runs, and leaves no lock file behind.
    again = runner.invoke(cli.app, ["segment", str(images), "-p", "a cat", "-o", str(output), "-m", str(tiny_model_dir)])
    assert again.exit_code == 0, again.output
    assert len(list(output.glob("*.png"))) == 4 and not (output / LOCK_NAME).exists()


@pytest.mark.skipif(sys.platform == "win32", reason="kill -9 semantics")
def test_lock_of_a_killed_process_does_not_block(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    code = (
        "import sys, time; from clipseg.fileio import folder_lock\n"
        f"with folder_lock({str(output)!r}):\n    print('locked', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=rf"another clipseg run .*\(process {holder.pid}\)"):
            with folder_lock(output):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock file stays
        holder.wait()
    assert (output / LOCK_NAME).exists()
    with folder_lock(output):  # the OS released the dead process's lock
        pass


def test_symlinked_subfolder_is_followed_once_without_loops(tmp_path, images, tiny_model_dir):
    root = tmp_path / "in"
    (root / "real").mkdir(parents=True)
    Image.open(images / "photo0.png").save(root / "real" / "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.open(images / "photo1.png").save(elsewhere / "b.png")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)
    output = tmp_path / "out"
    start = time.monotonic()
    result = runner.invoke(cli.app, ["segment", str(root), "-p", "a cat", "-o", str(output), "-m", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - start < 300
    names = sorted(p.name for p in output.rglob("*.png"))
    assert len(names) == 2 and any(name.startswith("b") for name in names)
    assert "warning:" in result.output and "already searched" in result.output
