"""Evaluation configuration: one YAML file per paper table (see ``configs/eval/`` in the repository).

Example::

    table: "5"
    protocol: pascal5i
    dataset: {root: ~/datasets/pascal, annotations: SegmentationClassAug, splits: ~/hsnet/data/splits/pascal/val}
    options: {prompt: visual, folds: [0, 1, 2, 3], episodes: 1000}
    models:
      - {name: "CLIPSeg (PC+)", source: CIDAS/clipseg-rd64-refined, threshold: 0.3}
      - name: "CLIPSeg (PC+), fold-specific weights"
        sources: {"0": runs/pas5i-0, "1": runs/pas5i-1, "2": runs/pas5i-2, "3": runs/pas5i-3}

A file may start from another with ``base: other.yaml`` (`clipseg.typed_config`). Relative paths are relative to
the working directory; ``~`` is expanded. ``dataset`` and ``options`` are read by the protocol
(`clipseg.evaluation.protocols`), which rejects unknown keys. A model's ``options`` override the protocol options
for that model only (e.g. the visual prompt of Table 9's "highlight mask" row).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..typed_config import build, read_yaml
from .protocols import PROTOCOLS
from .settings import EvalConfig


def config_from_dict(data: Mapping[str, Any], *, origin: str = "config") -> EvalConfig:
    """Validate a parsed YAML mapping into an `EvalConfig`."""
    try:
        config = build(EvalConfig, data)
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from None
    if config.protocol not in PROTOCOLS:
        raise ValueError(f"{origin}: unknown protocol {config.protocol!r}; expected one of {tuple(PROTOCOLS)}")
    return config


def load_config(path: str | os.PathLike) -> EvalConfig:
    """Read (``base:`` chains resolved) and validate an evaluation YAML file."""
    return config_from_dict(read_yaml(path, what="evaluation config"), origin=str(path))
