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

Relative paths are relative to the working directory; ``~`` is expanded. ``dataset`` and ``options`` are read by
the protocol (`clipseg.evaluation.protocols`), which rejects unknown keys. A model's ``options`` override the
protocol options for that model only (e.g. the visual prompt of Table 9's "highlight mask" row).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PROTOCOLS = (
    "phrasecut",
    "pascal_zeroshot",
    "pascal5i",
    "coco20i",
    "lvis_generalized",
    "visual_prompt_engineering",
)


@dataclass(frozen=True)
class ModelSpec:
    """One model (a row of the table).

    Attributes:
        name: the row label.
        source: anything `clipseg.load_model` accepts, or a directory saved by a baseline (`clipseg.model.baselines`).
        sources: per-task sources (task = fold or split name, e.g. "0" or "unseen-10") overriding `source`.
        clip: CLIP weights for an original-repository decoder file.
        extract_layers: override of the CLIP layers the decoder reads.
        threshold: the binary threshold reported for this model (the paper's t column); None = protocol default.
        paper_row: the paper's row this model reproduces (defaults to `name`).
        options: protocol options overridden for this model.
    """

    name: str
    source: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    clip: str | None = None
    extract_layers: tuple[int, ...] | None = None
    threshold: float | None = None
    paper_row: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def source_for(self, task: str) -> str:
        """The weights to evaluate `task` with."""
        source = self.sources.get(str(task), self.source)
        if source is None:
            raise ValueError(f"model {self.name!r} has no source for task {task!r} (set 'source' or 'sources')")
        return source


@dataclass(frozen=True)
class EvalConfig:
    """A whole evaluation run: one protocol, one dataset, several models."""

    table: str
    protocol: str
    models: tuple[ModelSpec, ...]
    title: str = ""
    dataset: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    image_size: int = 352
    batch_size: int = 8
    workers: int = 2
    device: str = "cpu"
    output: str = "runs/eval"
    cache: str | None = None
    limit: int | None = None
    qualitative: int = 6
    seed: int = 0

    @property
    def output_dir(self) -> Path:
        return Path(os.path.expanduser(self.output))

    @property
    def cache_dir(self) -> Path:
        return Path(os.path.expanduser(self.cache)) if self.cache else self.output_dir / "cache"

    def replace(self, **changes: Any) -> EvalConfig:
        return replace(self, **changes)


def _expand(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    return value


def _model_spec(raw: Any, index: int) -> ModelSpec:
    if not isinstance(raw, Mapping):
        raise ValueError(f"models[{index}] must be a mapping with at least 'name' and 'source', got {raw!r}")
    known = {f.name for f in fields(ModelSpec)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"models[{index}]: unknown keys {sorted(unknown)}; expected {sorted(known)}")
    if "name" not in raw:
        raise ValueError(f"models[{index}] needs a 'name'")
    values = dict(raw)
    values["sources"] = {str(k): _expand(str(v)) for k, v in (values.get("sources") or {}).items()}
    for key in ("source", "clip"):
        if values.get(key) is not None:
            values[key] = _expand(str(values[key]))
    if values.get("extract_layers") is not None:
        values["extract_layers"] = tuple(int(v) for v in values["extract_layers"])
    if values.get("threshold") is not None:
        values["threshold"] = float(values["threshold"])
    values["options"] = dict(values.get("options") or {})
    spec = ModelSpec(**values)
    if spec.source is None and not spec.sources:
        raise ValueError(f"model {spec.name!r} needs a 'source' (or per-task 'sources')")
    return spec


def config_from_dict(data: Mapping[str, Any], *, origin: str = "config") -> EvalConfig:
    """Validate a parsed YAML mapping into an `EvalConfig`."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{origin}: expected a mapping at the top level")
    known = {f.name for f in fields(EvalConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{origin}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
    for required in ("table", "protocol", "models"):
        if required not in data:
            raise ValueError(f"{origin}: missing required key {required!r}")
    if data["protocol"] not in PROTOCOLS:
        raise ValueError(f"{origin}: unknown protocol {data['protocol']!r}; expected one of {PROTOCOLS}")
    models = data["models"]
    if not isinstance(models, Sequence) or isinstance(models, str) or not models:
        raise ValueError(f"{origin}: 'models' must be a non-empty list")
    values = dict(data)
    values["table"] = str(values["table"])
    values["models"] = tuple(_model_spec(raw, k) for k, raw in enumerate(models))
    values["dataset"] = {k: _expand(v) for k, v in (values.get("dataset") or {}).items()}
    values["options"] = dict(values.get("options") or {})
    names = [m.name for m in values["models"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{origin}: model names must be unique, got {names}")
    config = EvalConfig(**values)
    if config.image_size < 16 or config.batch_size < 1 or config.workers < 0:
        raise ValueError(f"{origin}: image_size must be >= 16, batch_size >= 1 and workers >= 0")
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"{origin}: limit must be positive")
    return config


def load_config(path: str | os.PathLike) -> EvalConfig:
    """Read and validate an evaluation YAML file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML: {str(error).splitlines()[0]}") from None
    return config_from_dict(data, origin=str(path))
