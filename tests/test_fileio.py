import os

import pytest

from clipseg.fileio import atomic_write, write_bytes, write_text


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
