"""`clipseg segment DIR --watch` in a subprocess: files dropped in while it runs (one written slowly), a changed
file, a broken one, stopping by SIGINT and SIGTERM, and a restart that does not redo finished work; in this process:
a full disk stops the watch as it stops a normal run. Also the watch state's journal (appends, compaction, a torn
last line, a failed append) and the size-stability check on their own."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import clipseg
from clipseg import cli
from clipseg.testing import he_init_, tiny_config
from clipseg.watch import STATE_NAME, FolderEvents, WatchState, split_stable

SETTLE = "0.3"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    config = dataclasses.replace(tiny_config(), image_size=64)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    he_init_(clipseg.CLIPSeg(config), seed=0).eval().save_pretrained(directory)
    return directory


def picture(seed: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drop(path: Path, image: Image.Image) -> None:
    """Put a finished file in place at once, as a copy tool that renames does."""
    temporary = path.with_name("." + path.name + ".part")
    temporary.write_bytes(png_bytes(image))
    os.replace(temporary, path)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the watch ended early:\n{process.communicate()[1]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def start(inbox: Path, out: Path, model_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "clipseg", "segment", str(inbox), "--watch", "--settle", SETTLE, "-p", "a cup",
               "-f", "mask", "-f", "rle", "-o", str(out), "--model", str(model_dir), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str, str]:
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


def mask_of(out: Path, stem: str) -> Path:
    return out / f"{stem}__a_cup.png"


def test_watch_segments_new_slow_and_changed_files_and_stops_cleanly(tmp_path, model_dir):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    drop(inbox / "first.png", picture(1))
    process = start(inbox, out, model_dir)
    wait_for(lambda: mask_of(out, "first").exists(), process)
    # A new file while it runs; and one in a new subfolder.
    drop(inbox / "second.png", picture(2, (50, 70)))
    (inbox / "sub").mkdir()
    drop(inbox / "sub" / "third.png", picture(3))
    wait_for(lambda: mask_of(out, "second").exists() and mask_of(out / "sub", "third").exists(), process)
    assert Image.open(mask_of(out, "second")).size == (50, 70)
    # A file written slowly, in pieces, under its final name: taken only once complete.
    data = png_bytes(picture(4, (120, 90)))
    with open(inbox / "slow.png", "wb") as file:
        for start_byte in range(0, len(data), len(data) // 8 + 1):
            file.write(data[start_byte : start_byte + len(data) // 8 + 1])
            file.flush()
            time.sleep(0.1)
    wait_for(lambda: mask_of(out, "slow").exists(), process)
    assert Image.open(mask_of(out, "slow")).size == (120, 90)
    # A changed file is segmented again: its new size shows in the mask.
    before = mask_of(out, "first").stat().st_mtime_ns
    drop(inbox / "first.png", picture(5, (40, 30)))
    wait_for(lambda: mask_of(out, "first").stat().st_mtime_ns != before, process)
    wait_for(lambda: Image.open(mask_of(out, "first")).size == (40, 30), process)
    code, stdout, stderr = stop(process, signal.SIGINT)
    assert code == 0, stderr
    assert "error" not in stderr and "Traceback" not in stderr
    assert "segmented" in stdout and "stopped watching" in stderr
    assert not list(out.rglob(".clipseg-*.tmp*"))
    assert (out / STATE_NAME).exists()


def test_a_restart_skips_finished_work_and_redoes_changed_files(tmp_path, model_dir):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    for index in range(3):
        drop(inbox / f"photo{index}.png", picture(index))
    process = start(inbox, out, model_dir)
    wait_for(lambda: all(mask_of(out, f"photo{i}").exists() for i in range(3)), process)
    code, _, stderr = stop(process, signal.SIGTERM)
    assert code == 0, stderr
    assert journal_files(out / STATE_NAME) == [str((inbox / f"photo{i}.png").resolve()) for i in range(3)]
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("*.png")}
    # While stopped: one file changes, one is touched without changing, one is added.
    drop(inbox / "photo1.png", picture(11, (30, 20)))
    os.utime(inbox / "photo2.png")
    drop(inbox / "photo3.png", picture(3))
    process = start(inbox, out, model_dir)
    wait_for(lambda: mask_of(out, "photo3").exists(), process)
    wait_for(lambda: Image.open(mask_of(out, "photo1")).size == (30, 20), process)
    time.sleep(1.0)  # time to (wrongly) redo the others
    code, stdout, stderr = stop(process, signal.SIGTERM)
    assert code == 0, stderr
    assert mask_of(out, "photo0").stat().st_mtime_ns == stamps[mask_of(out, "photo0")]
    assert mask_of(out, "photo2").stat().st_mtime_ns == stamps[mask_of(out, "photo2")]
    assert mask_of(out, "photo1").stat().st_mtime_ns != stamps[mask_of(out, "photo1")]
    # Compacted on stop: one record per input, photo1's new content among them.
    assert journal_files(out / STATE_NAME) == [str((inbox / f"photo{i}.png").resolve()) for i in range(4)]
    assert WatchState(out / STATE_NAME).known(inbox / "photo1.png")
    assert not WatchState(out / STATE_NAME).changed(inbox / "photo1.png")


def journal_files(path: Path) -> list[str]:
    """The inputs a compacted journal records, in order, read with json alone; fails on a line that is no JSON
    or on a second record of the same input."""
    header, *records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert header == {"version": 2}
    files = [record["file"] for record in records]
    assert len(set(files)) == len(files)
    return files


def test_a_broken_file_is_one_error_line_and_the_exit_status_is_1(tmp_path, model_dir):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    process = start(inbox, out, model_dir)
    time.sleep(0.5)
    (inbox / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    drop(inbox / "fine.png", picture(7))
    wait_for(lambda: mask_of(out, "fine").exists(), process)
    time.sleep(1.0)
    code, _, stderr = stop(process, signal.SIGINT)
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0], stderr
    assert not mask_of(out, "broken").exists()


def test_watch_state_tells_changed_content_from_a_touch(tmp_path):
    source = tmp_path / "a.png"
    source.write_bytes(b"one")
    state = WatchState(tmp_path / "state.json")
    assert not state.known(source) and not state.changed(source)
    state.record([source])
    reloaded = WatchState(tmp_path / "state.json")
    assert reloaded.known(source) and not reloaded.changed(source)
    os.utime(source, ns=(1, 1))
    assert not reloaded.changed(source)  # same bytes
    source.write_bytes(b"two")
    assert reloaded.changed(source)
    (tmp_path / "broken.json").write_text("{not json")
    assert not WatchState(tmp_path / "broken.json").known(source)  # an unreadable state starts afresh


def test_split_stable_keeps_files_whose_size_stays_the_same(tmp_path):
    done, growing, empty = tmp_path / "done.png", tmp_path / "growing.png", tmp_path / "empty.png"
    done.write_bytes(b"x" * 10)
    growing.write_bytes(b"x")
    empty.write_bytes(b"")

    def grow_while_waiting(seconds: float) -> None:
        with open(growing, "ab") as file:
            file.write(b"more")

    stable, busy = split_stable([done, growing, empty, tmp_path / "gone.png"], 0.0, sleep=grow_while_waiting)
    assert stable == [done]
    assert busy == [growing, empty, tmp_path / "gone.png"]


def test_watch_needs_a_folder(tmp_path, model_dir):
    image = tmp_path / "one.png"
    picture(1).save(image)
    result = CliRunner().invoke(cli.app, ["segment", str(image), "--watch", "-p", "a cup", "-o", str(tmp_path / "out"),
                                          "--model", str(model_dir), "--device", "cpu"])
    assert result.exit_code == 2
    assert "--watch needs a folder" in result.stderr


def test_a_full_disk_stops_the_watch_as_it_stops_a_normal_run(tmp_path, model_dir, monkeypatch):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    for index in range(4):
        picture(index).save(inbox / f"photo{index}.png")
    # No file-system events: without the stop, the watch would end after its first round with an error per file.
    monkeypatch.setattr(FolderEvents, "__iter__", lambda self: iter(()))
    from clipseg.batch.store import OutputStore

    real_write, saved = OutputStore.write, []

    def write(store, path, data):
        if path.suffix == ".png":  # not the output folder's write probe
            if saved:  # the disk is full after the first mask
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            saved.append(path)
        return real_write(store, path, data)

    monkeypatch.setattr(OutputStore, "write", write)
    args = ["segment", str(inbox), "--watch", "--settle", "0.05", "-p", "a cup", "-o", str(out), "--model",
            str(model_dir), "--device", "cpu"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "No space left on device" in errors[0] and str(out) in errors[0] and "1 files written" in errors[0]
    assert "free space and run the same command again" in errors[0]
    assert [path.name for path in out.glob("*.png")] == [saved[0].name]
    assert len(journal_files(out / STATE_NAME)) == 1  # the finished file, and only it, is recorded
    assert not list(out.rglob(".clipseg-*.tmp*"))
    # Space again: the same command does the rest and leaves the finished file alone.
    monkeypatch.setattr(OutputStore, "write", real_write)
    stamp = saved[0].stat().st_mtime_ns
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 0, again.output
    assert len(list(out.glob("*.png"))) == 4 and saved[0].stat().st_mtime_ns == stamp
    assert len(journal_files(out / STATE_NAME)) == 4


def _fingerprinted(tmp_path: Path, names: str) -> dict[str, Path]:
    files = {}
    for name in names:
        files[name] = tmp_path / f"{name}.png"
        files[name].write_bytes(name.encode() * 10)
    return files


def test_the_journal_appends_one_synced_record_per_file_and_compacts_on_open_and_close(tmp_path, monkeypatch):
    files = _fingerprinted(tmp_path, "abc")
    journal = tmp_path / "state.jsonl"
    state = WatchState(journal)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda descriptor: (synced.append(descriptor), real_fsync(descriptor))[1])
    state.record([files["a"]])
    first = journal.read_bytes()
    inode = journal.stat().st_ino
    state.record([files["b"]])
    files["a"].write_bytes(b"changed")
    assert state.changed(files["a"])
    state.record([files["a"]])  # redone: a second record for a, the last one wins
    assert len(synced) == 3
    content = journal.read_bytes()
    assert content.startswith(first) and journal.stat().st_ino == inode  # appended, never rewritten
    assert len(content.splitlines()) == 1 + 3
    reloaded = WatchState(journal)  # compacts: one record per input
    assert reloaded.known(files["a"]) and reloaded.known(files["b"]) and not reloaded.known(files["c"])
    assert not reloaded.changed(files["a"]) and not reloaded.changed(files["b"])
    assert journal_files(journal) == [str(files["a"].resolve()), str(files["b"].resolve())]
    state.close()
    reloaded.close()


def test_a_torn_last_line_is_ignored_and_the_next_record_starts_a_line(tmp_path, monkeypatch):
    files = _fingerprinted(tmp_path, "abc")
    journal = tmp_path / "state.jsonl"
    with WatchState(journal) as state:
        state.record([files["a"], files["b"]])
    whole = journal.read_text(encoding="utf-8")
    # A crash in the middle of appending c's record.
    journal.write_text(whole + '{"file": "' + str(files["c"].resolve()) + '", "size": 3', encoding="utf-8")
    state = WatchState(journal)
    assert state.known(files["a"]) and state.known(files["b"]) and not state.known(files["c"])
    assert journal_files(journal) == [str(files["a"].resolve()), str(files["b"].resolve())]  # torn line gone
    state.close()
    # Torn again, and this time the compaction cannot write (a full disk): the next append starts a new line.
    journal.write_text(whole + '{"file": "/torn', encoding="utf-8")
    import clipseg.watch

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(clipseg.watch, "write_text", full)
    state = WatchState(journal)
    state.record([files["c"]])
    state.close()
    monkeypatch.undo()
    reloaded = WatchState(journal)
    assert all(reloaded.known(path) for path in files.values())
    # A journal that a failed compaction never created gets its header with the first record.
    monkeypatch.setattr(clipseg.watch, "write_text", full)
    fresh = WatchState(tmp_path / "fresh.jsonl")
    fresh.record([files["a"]])
    monkeypatch.undo()
    assert WatchState(tmp_path / "fresh.jsonl").known(files["a"])


def test_a_failed_append_leaves_the_journal_as_it_was(tmp_path, monkeypatch):
    files = _fingerprinted(tmp_path, "ab")
    journal = tmp_path / "state.jsonl"
    state = WatchState(journal)
    state.record([files["a"]])
    before = journal.read_bytes()

    def fsync(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left on device") as raised:
        state.record([files["b"]])
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(journal)
    monkeypatch.undo()
    assert journal.read_bytes() == before  # the record that was not synced is cut off again
    assert not state.known(files["b"])
    state.record([files["b"]])
    assert WatchState(journal).known(files["b"])


def test_a_journal_without_this_versions_header_starts_afresh(tmp_path):
    files = _fingerprinted(tmp_path, "a")
    journal = tmp_path / "state.jsonl"
    with WatchState(journal) as state:
        state.record([files["a"]])
    header, record = journal.read_text(encoding="utf-8").splitlines()
    journal.write_text(json.dumps({"version": 1}) + "\n" + record + "\n", encoding="utf-8")
    assert not WatchState(journal).known(files["a"])
    journal.write_text(record + "\n", encoding="utf-8")
    assert not WatchState(journal).known(files["a"])
