"""The released CLIPSeg weights, resolved in one place."""

from __future__ import annotations

# Short names -> Hugging Face hub repositories holding converted full checkpoints (CLIP + decoder).
HUB_MODELS: dict[str, str] = {
    "rd64-refined": "CIDAS/clipseg-rd64-refined",
    "rd64": "CIDAS/clipseg-rd64",
    "rd16": "CIDAS/clipseg-rd16",
}
DEFAULT_MODEL = HUB_MODELS["rd64-refined"]

# The original repository's decoder-only files (rd64-uni.pth, rd64-uni-refined.pth, rd16-uni.pth) need CLIP
# ViT-B/16 weights from elsewhere; by default those of OpenAI on the hub, in transformers' layout.
DEFAULT_CLIP = "openai/clip-vit-base-patch16"

# The released decoders were trained reading CLIP blocks (3, 7, 9) (paper; experiments/phrasecut.yaml) but the
# original Quickstart (CLIPDensePredT's default) and the hub conversions run them with (3, 6, 9). We default to
# (3, 6, 9) so our numbers match every other front-end; pass extract_layers=(3, 7, 9) for the training setting.
ORIGINAL_EXTRACT_LAYERS: tuple[int, ...] = (3, 6, 9)
PAPER_EXTRACT_LAYERS: tuple[int, ...] = (3, 7, 9)

# Files of a hub repository that loading needs (weights in safetensors; pytorch_model.bin is the fallback).
HUB_FILE_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "vocab.json",
    "merges.txt",
    "*.safetensors",
    "model.safetensors.index.json",
    "thresholds.json",
]
