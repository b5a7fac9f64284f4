"""The typed settings of an evaluation run (`EvalConfig`) and of each evaluated model (`ModelSpec`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from ..typed_config import HomePath, expand_home


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
    source: HomePath | None = None
    sources: Mapping[str, HomePath] = field(default_factory=dict)
    clip: HomePath | None = None
    extract_layers: tuple[int, ...] | None = None
    threshold: float | None = None
    paper_row: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source is None and not self.sources:
            raise ValueError(f"model {self.name!r} needs a 'source' (or per-task 'sources')")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:  # also refuses NaN
            raise ValueError(f"model {self.name!r}: threshold = {self.threshold}: expected a probability in [0, 1]")

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
    dataset: Mapping[str, Annotated[Any, expand_home]] = field(default_factory=dict)
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

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: must be a non-empty list")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        if self.image_size < 16 or self.batch_size < 1 or self.workers < 0:
            raise ValueError("image_size must be >= 16, batch_size >= 1 and workers >= 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be positive")

    @property
    def output_dir(self) -> Path:
        return Path(expand_home(self.output))

    @property
    def cache_dir(self) -> Path:
        return Path(expand_home(self.cache)) if self.cache else self.output_dir / "cache"

    def replace(self, **changes: Any) -> EvalConfig:
        return replace(self, **changes)
