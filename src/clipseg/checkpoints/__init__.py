"""Checkpoint formats: safe reading, converters from and to foreign layouts, and the one loading pipeline."""

from . import publish  # registers the transformers and original layouts with CLIPSeg.save_pretrained
from .load import load_model

__all__ = ["load_model", "publish"]
