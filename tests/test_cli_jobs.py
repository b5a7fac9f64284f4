"""Job planning and output naming of the image commands (clipseg.cli.jobs): file-system code, tested without torch.

The files are empty: planning looks at names only. Expected names are written out by hand from the naming rules
(README: "Output files"), hashes computed here with hashlib from the image's full path.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from clipseg.cli.common import EXIT_USAGE, CLIError
from clipseg.cli.jobs import plan_jobs, plan_label_outputs, plan_segment_outputs, prepare_output
from clipseg.cli.options import OutputFormat


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def quiet() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200), buffer


def stems(jobs) -> dict[str, str]:
    """Image file name -> its planned stem."""
    return {job.source.name: str(job.stem) for job in jobs}


def sha8(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:8]


def test_folders_are_walked_recursively_skipping_hidden_entries_other_files_and_the_output(tmp_path):
    root = tmp_path / "in"
    touch(
        root / "b.jpg", root / "a.PNG", root / "notes.txt", root / ".hidden.jpg", root / ".cache" / "c.jpg",
        root / "sub" / "d.webp", root / "out" / "old.png",
    )
    console, printed = quiet()
    jobs, failures = plan_jobs([root], root / "out", console)
    assert [job.source.relative_to(root).as_posix() for job in jobs] == ["a.PNG", "b.jpg", "sub/d.webp"]
    assert [str(job.stem) for job in jobs] == ["a", "b", str(Path("sub", "d"))]
    assert failures == [] and printed.getvalue() == ""


def test_a_file_named_twice_or_inside_a_named_folder_is_planned_once(tmp_path):
    root = tmp_path / "in"
    touch(root / "cat.jpg")
    jobs, _ = plan_jobs([root / "cat.jpg", root, root / "cat.jpg"], tmp_path / "out", quiet()[0])
    assert [job.source for job in jobs] == [root / "cat.jpg"]
    assert jobs[0].stem == Path("cat")  # named directly: no folders in its stem


def test_same_name_with_other_suffixes_gets_the_suffix_appended(tmp_path):
    root = tmp_path / "in"
    touch(root / "photo.jpg", root / "photo.png", root / "other.jpg")
    jobs, _ = plan_jobs([root], tmp_path / "out", quiet()[0])
    assert stems(jobs) == {"other.jpg": "other", "photo.jpg": "photo_jpg", "photo.png": "photo_png"}


def test_names_still_colliding_after_the_suffix_get_a_hash_of_the_path(tmp_path):
    root = tmp_path / "in"
    # "a b.jpg" and "a_b.jpg" both sanitise to a_b, and both get _jpg: only the path tells them apart.
    touch(root / "a b.jpg", root / "a_b.jpg", root / "a_b.png")
    jobs, _ = plan_jobs([root], tmp_path / "out", quiet()[0])
    assert stems(jobs) == {
        "a b.jpg": f"a_b_jpg-{sha8(root / 'a b.jpg')}",
        "a_b.jpg": f"a_b_jpg-{sha8(root / 'a_b.jpg')}",
        "a_b.png": "a_b_png",
    }
    assert len({str(job.stem).lower() for job in jobs}) == 3


def test_collisions_ignore_case_and_folder_names_are_sanitised(tmp_path):
    root = tmp_path / "in"
    touch(root / "my photos" / "Cat.jpg", root / "my photos" / "cat.jpg", root / "$$" / "dog.png")
    if len(list((root / "my photos").iterdir())) < 2:
        pytest.skip("case-insensitive file system")
    jobs, _ = plan_jobs([root], tmp_path / "out", quiet()[0])
    by_name = {job.source.name: str(job.stem) for job in jobs}
    assert by_name == {
        "Cat.jpg": str(Path("my_photos", f"Cat_jpg-{sha8(root / 'my photos' / 'Cat.jpg')}")),
        "cat.jpg": str(Path("my_photos", f"cat_jpg-{sha8(root / 'my photos' / 'cat.jpg')}")),
        "dog.png": str(Path("folder", "dog")),  # "$$" sanitises to nothing: the fallback name
    }


def test_missing_inputs_fail_empty_folders_warn_and_the_output_folder_is_no_input(tmp_path):
    root = tmp_path / "in"
    (tmp_path / "empty").mkdir()
    touch(root / "cat.jpg")
    console, printed = quiet()
    jobs, failures = plan_jobs([tmp_path / "nothing.jpg", tmp_path / "empty", root], tmp_path / "out", console)
    assert [job.source for job in jobs] == [root / "cat.jpg"]
    assert failures == [(str(tmp_path / "nothing.jpg"), "no such file or directory")]
    assert printed.getvalue().strip() == f"warning: {tmp_path / 'empty'}: no image files found"
    with pytest.raises(CLIError) as raised:
        plan_jobs([root], root, console)
    assert raised.value.exit_code == EXIT_USAGE and "both an input and the output folder" in str(raised.value)


def test_segment_and_label_file_names(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    touch(root / "sub" / "kitchen.jpg")
    jobs, _ = plan_jobs([root], out, quiet()[0])
    plan_segment_outputs(jobs, out, [OutputFormat.mask, OutputFormat.overlay, OutputFormat.rle], ["a cup", "A Cup!"])
    cup, cup_upper = "a_cup", "A_Cup"  # equal without case: each gets a hash of its text
    cup += "-" + hashlib.sha1(b"a cup").hexdigest()[:8]
    cup_upper += "-" + hashlib.sha1(b"A Cup!").hexdigest()[:8]
    assert {key: path.relative_to(out).as_posix() for key, path in jobs[0].files.items()} == {
        ("mask", 0): f"sub/kitchen__{cup}.png",
        ("mask", 1): f"sub/kitchen__{cup_upper}.png",
        ("overlay", 0): f"sub/kitchen__{cup}.overlay.jpg",
        ("overlay", 1): f"sub/kitchen__{cup_upper}.overlay.jpg",
        ("rle", None): "sub/kitchen.rle.json",
    }
    assert not jobs[0].done()
    plan_label_outputs(jobs, out)
    assert sorted(path.relative_to(out).as_posix() for path in jobs[0].files.values()) == [
        "sub/kitchen.labels-overlay.jpg",
        "sub/kitchen.labels.png",
    ]
    touch(*jobs[0].files.values())
    assert jobs[0].done()


def test_prepare_output_creates_the_folder_and_removes_stale_temporaries(tmp_path):
    out = tmp_path / "a" / "b"
    prepare_output(out)
    assert out.is_dir() and list(out.iterdir()) == []
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale = out / "sub" / f".clipseg-{finished.pid}-0123456789ab.tmp.png"  # left by a writer that was killed
    touch(stale, out / "sub" / "kept.png")
    prepare_output(out)
    assert not stale.exists() and (out / "sub" / "kept.png").exists()
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(CLIError, match="cannot write to output folder"):
        prepare_output(blocked / "out")


def test_planning_imports_no_torch(tmp_path):
    root = tmp_path / "in"
    touch(root / "photo.jpg", root / "photo.png")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from rich.console import Console
        from clipseg.cli.jobs import plan_jobs, plan_segment_outputs, prepare_output
        from clipseg.cli.options import OutputFormat
        jobs, _ = plan_jobs([Path({str(root)!r})], Path({str(tmp_path / 'out')!r}), Console())
        plan_segment_outputs(jobs, Path({str(tmp_path / 'out')!r}), list(OutputFormat), ["a cup"])
        prepare_output(Path({str(tmp_path / 'out')!r}))
        print(sorted(str(job.stem) for job in jobs))
        print("torch" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["['photo_jpg', 'photo_png']", "False"]
