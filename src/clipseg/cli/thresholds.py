"""The threshold options of `segment` and `labels`: a number, a thresholds file, or the model directory's own
thresholds.json; and the lines that say which threshold each prompt uses. torch-free."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .common import EXIT_USAGE, CLIError, one_line, print_line

if TYPE_CHECKING:
    from rich.console import Console

    from ..thresholds import Thresholds

DEFAULT_THRESHOLD = 0.4  # clipseg.postprocess.DEFAULT_THRESHOLD, spelled out to keep numpy out of --help


def parse_threshold(value: str | None, option: str) -> float | Thresholds | None:
    """`value` of `option` as a probability in [0, 1] or a loaded thresholds file; None when not given. A bad
    number or file is a one-line usage error naming the file and key."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if math.isnan(number) or not 0.0 <= number <= 1.0:
            raise CLIError(f"{option} {value}: a threshold is a probability in [0, 1] (or a thresholds.json file)",
                           EXIT_USAGE)
        return number
    from ..thresholds import Thresholds, ThresholdsError

    try:
        return Thresholds.load(value)
    except ThresholdsError as error:
        raise CLIError(f"{option}: {one_line(error)}", EXIT_USAGE) from None


def model_thresholds(source: str) -> Thresholds | None:
    """The calibrated thresholds.json that comes with the model `source`: in a local model directory, or in the
    Hugging Face cache of a hub id (after the model's first download). None when there is none."""
    from pathlib import Path

    from ..thresholds import THRESHOLDS_NAME, Thresholds, ThresholdsError

    path = Path(source) / THRESHOLDS_NAME if Path(source).is_dir() else None
    if path is None and not Path(source).exists():
        from ..checkpoints.pretrained import HUB_MODELS

        repo_id = HUB_MODELS.get(source, source)
        if re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):  # a hub id: look in the cache only, never download here
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(repo_id, THRESHOLDS_NAME)
            path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.exists():
        return None
    try:
        return Thresholds.load(path)
    except ThresholdsError as error:
        raise CLIError(one_line(error), EXIT_USAGE) from None


def resolve_threshold(
    given: float | Thresholds | None,
    given_text: str | None,
    calibrated: Thresholds | None,
    names: Sequence[str],
    console: Console,
) -> float | Thresholds:
    """The threshold to use: the one given, else the model's calibrated thresholds (said once), else
    `DEFAULT_THRESHOLD`. With a thresholds file, one line per prompt says which threshold it uses and why."""
    origin = given_text
    if given is None:
        given = calibrated
        if given is None:
            return DEFAULT_THRESHOLD
        origin = "the model's thresholds.json"
        print_line(console, f"using the model's calibrated thresholds.json (criterion {given.criterion}); "
                            "--threshold overrides it")
    if isinstance(given, float):
        return given
    for name in names:
        own = name in given.prompts
        why = f"its own in {origin}" if own else f"the overall threshold of {origin}"
        print_line(console, f"threshold {given.for_prompt(name):.2f} for {name!r} ({why})")
    return given
