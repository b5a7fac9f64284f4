"""Calibrated thresholds: one per prompt, measured on labelled data, with an overall fallback.

A thresholds file (``thresholds.json``, written by ``clipseg eval --write-thresholds`` and by ``clipseg train`` into
the model it exports) reads::

    {"criterion": "fgiou", "overall": 0.38, "prompts": {"a cup": 0.42}, "model": "CIDAS/clipseg-rd64-refined"}

`Prediction.masks`, the CLI's ``--threshold FILE`` and a model directory's ``thresholds.json`` use it: a prompt
named in ``prompts`` gets its own threshold, every other prompt the overall one.

`binary_mask` is the one rule by which a probability becomes a mask pixel: ``p > t``. `THRESHOLDS` are the 49 the
paper's metrics score at (`clipseg.evaluation.metrics`) and calibration chooses from (`clipseg.calibration`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

THRESHOLDS: np.ndarray = np.linspace(0, 1, 51)[1:-1]
"""The 49 fixed thresholds 0.02, 0.04, ..., 0.98 of the paper's metrics (the original's ``linspace(0, 1, 51)[1:-1]``)."""
NUM_THRESHOLDS = len(THRESHOLDS)
THRESHOLDS_NAME = "thresholds.json"
CRITERIA = ("fgiou", "precision", "recall")
# A thresholds file is a few prompts' worth of JSON; anything far larger is not one.
_MAX_FILE_BYTES = 16 * 1024 * 1024


class ThresholdsError(ValueError):
    """A thresholds file or value that cannot be used; the message names the file or key."""


@dataclass(frozen=True)
class Thresholds:
    """Per-prompt thresholds with an overall fallback.

    Attributes:
        overall: threshold of prompts not listed in `prompts`.
        prompts: prompt text -> threshold.
        criterion: how they were chosen: "fgiou" (best IoU_FG), or "precision"/"recall" (lowest/highest threshold
            reaching `target`).
        target: the precision or recall aimed at (None for "fgiou").
        model: the model they were measured for (its source), if known.
    """

    overall: float
    prompts: Mapping[str, float] = field(default_factory=dict)
    criterion: str = "fgiou"
    target: float | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        _check_value(self.overall, "overall")
        for prompt, value in self.prompts.items():
            _check_value(value, f"prompts[{prompt!r}]")
        if self.criterion not in CRITERIA:
            raise ThresholdsError(f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")

    def for_prompt(self, prompt: str) -> float:
        """The threshold of `prompt`: its own if listed, else the overall one."""
        return float(self.prompts.get(prompt, self.overall))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"criterion": self.criterion, "overall": self.overall, "prompts": dict(self.prompts)}
        if self.target is not None:
            data["target"] = self.target
        data["model"] = self.model
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "thresholds") -> Thresholds:
        """Parse the JSON form; every problem is a `ThresholdsError` naming `source` and the key."""
        if not isinstance(data, Mapping):
            raise ThresholdsError(f"{source}: expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"criterion", "overall", "prompts", "target", "model"}
        if unknown:
            raise ThresholdsError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
        if "overall" not in data:
            raise ThresholdsError(f"{source}: missing key 'overall' (the threshold of prompts not listed)")
        prompts = data.get("prompts", {})
        if not isinstance(prompts, Mapping) or not all(isinstance(k, str) for k in prompts):
            raise ThresholdsError(f"{source}: 'prompts' must map prompt texts to thresholds")
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise ThresholdsError(f"{source}: 'model' must be a string or null")
        try:
            return cls(
                overall=_number(data["overall"], f"{source}: overall"),
                prompts={k: _number(v, f"{source}: prompts[{k!r}]") for k, v in prompts.items()},
                criterion=data.get("criterion", "fgiou"),
                target=None if data.get("target") is None else _number(data["target"], f"{source}: target"),
                model=model,
            )
        except ThresholdsError as error:
            message = str(error)
            raise ThresholdsError(message if message.startswith(source) else f"{source}: {message}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Thresholds:
        """Read a thresholds file (a regular file of at most 16 MiB)."""
        path = Path(path)
        if not path.is_file():
            raise ThresholdsError(f"{path}: no such thresholds file" if not path.exists() else f"{path}: not a file")
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ThresholdsError(f"{path}: {path.stat().st_size:,} bytes is too large for a thresholds file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ThresholdsError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(data, str(path))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON form atomically."""
        from .fileio import write_text

        write_text(Path(path), json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return Path(path)


ThresholdLike = float | Thresholds | Mapping[str, float]


def per_prompt(threshold: ThresholdLike, names: Sequence[str]) -> list[float]:
    """The threshold of each prompt in `names`: a single number for all, a `Thresholds`, or a mapping whose
    missing prompts are an error."""
    if isinstance(threshold, Thresholds):
        return [threshold.for_prompt(name) for name in names]
    if isinstance(threshold, Mapping):
        missing = [name for name in names if name not in threshold]
        if missing:
            raise ThresholdsError(f"no threshold for prompt(s) {', '.join(map(repr, missing))}")
        values = [threshold[name] for name in names]
        for name, value in zip(names, values):
            _check_value(value, f"threshold of {name!r}")
        return [float(v) for v in values]
    _check_value(threshold, "threshold")
    return [float(threshold)] * len(names)


def binary_mask(probabilities: Any, threshold: Any) -> Any:
    """The pixels whose probability is strictly above `threshold` (``p > t``), compared in float32.

    The one rule wherever a probability becomes a mask: `Prediction` masks, unions and label maps, mask
    post-processing (and with it the CLI, videos and collections), the server, the alpha-matting trimap; the
    evaluation metrics (`clipseg.evaluation.metrics.threshold_statistics`) count pixels by the same rule, so a
    threshold chosen on evaluation data gives exactly the masks it was scored with. ``p > t`` is what the original
    CLIPSeg code scored with (metrics.py, `FixedIntervalMetrics`: ``torch.where(p > thresh)``).

    Args:
        probabilities: a torch tensor or numpy array of probabilities, any shape.
        threshold: a number, or values broadcast against `probabilities` (e.g. one per prompt, shape (P, 1, 1)).

    Returns:
        A bool tensor or array (as `probabilities`) of the broadcast shape.
    """
    torch = sys.modules.get("torch")  # a tensor means torch is imported; otherwise it need not be
    if torch is not None and isinstance(probabilities, torch.Tensor):
        limit = torch.as_tensor(threshold, dtype=torch.float32, device=probabilities.device)
        return probabilities.float() > limit
    return np.asarray(probabilities, dtype=np.float32) > np.asarray(threshold, dtype=np.float32)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ThresholdsError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_value(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value <= 1:
        raise ThresholdsError(f"{name} must be a number in [0, 1], got {value!r}")
