"""Checkpoint formats: safe reading, converters from foreign layouts, and the one loading pipeline."""

from .load import load_model

__all__ = ["load_model"]
