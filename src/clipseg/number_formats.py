"""The number formats inference runs in (`clipseg.precision.apply_precision`).

A module of its own, without torch, so that the CLI builds its --precision choices from this tuple and
`clipseg --help` stays fast.
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
