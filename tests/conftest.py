"""Fixtures shared by several test modules: synthetic benchmarks in the official formats, a tiny saved model and
one-thread torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

@pytest.fixture(scope="session")
def benchmarks(tmp_path_factory) -> Path:
    """Synthetic PhraseCut, Pascal VOC + SBD + Pascal-5i lists, COCO 2014 + COCO-20i lists and LVIS, written once."""
    from clipseg.data.synthetic import write_phrasecut
    from clipseg.data.synthetic_benchmarks import (
        write_coco2014,
        write_lvis,
        write_pascal,
    )

    root = tmp_path_factory.mktemp("benchmarks")
    write_phrasecut(root / "phrasecut", 24, size=(64, 64), split_fractions=(0.2, 0.1, 0.7))
    write_pascal(root / "pascal", 24, size=(80, 96))
    write_coco2014(root / "coco", size=(64, 64))
    write_lvis(root / "lvis", size=(64, 64))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPSeg saved with `save_pretrained`."""
    from clipseg.testing import random_model

    directory = tmp_path_factory.mktemp("tiny_model")
    random_model(seed=3).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run faster on one thread, and the test machine is shared (`pytestmark = usefixtures(...)`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def full_disk_after(monkeypatch):
    """`full_disk_after(n)`: from now on os.fsync succeeds `n` times, then fails with ENOSPC (a disk that fills
    up); returns the list of descriptors it was called with."""
    import errno
    import os

    real_fsync = os.fsync

    def arm(successes: int) -> list[int]:
        calls: list[int] = []

        def fsync(descriptor: int) -> None:
            calls.append(descriptor)
            if len(calls) > successes:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(descriptor)

        monkeypatch.setattr(os, "fsync", fsync)
        return calls

    return arm
