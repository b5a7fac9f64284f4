"""The paper's text prompt templates (Sec. 4): a phrase is put into a template before CLIP encodes it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

TemplateSet = Literal["plain", "fixed", "shuffle", "shuffle+"]

_SHUFFLE = ("a photo of a {}.", "a photograph of a {}.", "an image of a {}.", "{}.")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "plain": ("{}",),
    "fixed": ("a photo of a {}.",),
    "shuffle": _SHUFFLE,
    # The training setting of the released models.
    "shuffle+": _SHUFFLE
    + (
        "a cropped photo of a {}.",
        "a good photo of a {}.",
        "a photo of one {}.",
        "a bad photo of a {}.",
        "a photo of the {}.",
    ),
}


def resolve_templates(templates: TemplateSet | Sequence[str]) -> tuple[str, ...]:
    """A named template set, or a custom list checked to hold one '{}' per template."""
    if isinstance(templates, str):
        if templates not in TEMPLATES:
            raise ValueError(f"unknown template set {templates!r}; choose one of {', '.join(TEMPLATES)} or pass a list")
        return TEMPLATES[templates]
    chosen = tuple(templates)
    if not chosen or any(not isinstance(t, str) or t.count("{}") != 1 for t in chosen):
        raise ValueError("custom templates must be a non-empty list of strings, each with exactly one '{}'")
    return chosen
