"""The CLIPSeg model: CLIP's two towers and the decoder, written to be read top to bottom."""

from .clipseg import CLIPSeg
from .config import PRESETS, CLIPSegConfig, DecoderConfig, TextConfig, VisionConfig

__all__ = ["CLIPSeg", "CLIPSegConfig", "DecoderConfig", "PRESETS", "TextConfig", "VisionConfig"]
