import os

import pytest

import subprocess
import sys

from clipseg.fileio import TEMP_PREFIX, atomic_path, atomic_write, remove_stale_temporaries, write_bytes, write_text


def test_write_replaces_whole_file_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text(target, "first")
    write_text(target, "second ü")
    assert target.read_text(encoding="utf-8") == "second ü"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as file:
            file.write(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "sub" / f"{TEMP_PREFIX}{int(dead.stdout)}-abc.tmp.png"
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    with atomic_path(tmp_path / "live.png") as live:  # this process's own temporary is kept
        assert live.suffix == ".png"
        assert remove_stale_temporaries(tmp_path) == 1
        assert live.exists() and not stale.exists()
    assert (tmp_path / "live.png").exists()
