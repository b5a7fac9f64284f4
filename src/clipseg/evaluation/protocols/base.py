"""What every benchmark protocol shares: `EvaluationProtocol`, its dataset/option parsing and the one registry.

Each protocol reads its ``dataset`` and ``options`` mapping from the evaluation config (unknown keys and values of
the wrong type are errors), evaluates one model spec at a time and returns table rows
(`clipseg.evaluation.engine.Row`). Defaults reproduce the original code's settings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ...typed_config import build
from ..engine import Row, Runtime
from ..settings import EvalConfig, ModelSpec

PROTOCOLS: dict[str, type[EvaluationProtocol]] = {}
"""Every protocol by its config name (``protocol:``), filled by `register`."""

T = TypeVar("T", bound="EvaluationProtocol")


def register(cls: type[T]) -> type[T]:
    """Class decorator: make a protocol available under its `name`."""
    PROTOCOLS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Fidelity:
    """How a protocol relates to the released code, for the report's "Fidelity" section: what it `follows` and
    where it deliberately `departs` (with the option that gives the released behaviour, if any)."""

    follows: tuple[str, ...] = ()
    departs: tuple[str, ...] = ()


class EvaluationProtocol(ABC):
    """A benchmark protocol: dataset and option parsing, and `rows` for one model."""

    name: ClassVar[str]
    Options: ClassVar[type]
    fidelity: ClassVar[Fidelity] = Fidelity()
    required_dataset_keys: ClassVar[tuple[str, ...]] = ("root",)
    optional_dataset_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        allowed = set(self.required_dataset_keys) | set(self.optional_dataset_keys)
        unknown = set(config.dataset) - allowed
        if unknown:
            raise ValueError(f"dataset: unknown keys {sorted(unknown)} for {self.name}; expected {sorted(allowed)}")
        missing = [k for k in self.required_dataset_keys if not config.dataset.get(k)]
        if missing:
            raise ValueError(f"dataset: {self.name} needs {missing} (the dataset location)")
        self.options = self.options_for(None)

    def options_for(self, spec: ModelSpec | None) -> Any:
        """Protocol options with the model's overrides applied."""
        raw = {**self.config.options, **(spec.options if spec is not None else {})}
        options = build(self.Options, raw, "options")
        self.validate(options)
        return options

    def validate(self, options: Any) -> None:
        """Reject inconsistent options (called for the protocol and for every model's overrides)."""

    def threshold(self, spec: ModelSpec, options: Any) -> float:
        return spec.threshold if spec.threshold is not None else options.threshold

    @abstractmethod
    def rows(self, spec: ModelSpec, runtime: Runtime) -> list[Row]:
        """Evaluate one model."""


def make_protocol(config: EvalConfig) -> EvaluationProtocol:
    """The protocol named by `config.protocol`, with its dataset and options validated."""
    return PROTOCOLS[config.protocol](config)
