"""ViTSeg (the paper's ImageNet-backbone baseline) assembled from a timm ViT checkpoint and CLIP weights."""

from __future__ import annotations

import os

import torch

from ..model.baselines import ViTSeg
from ..model.config import CLIPSegConfig, DecoderConfig
from .io import read_state_dict
from .load import build, load_clip
from .timm_vit import timm_vision_config, timm_vit_to_ours


def build_vitseg(
    vit_checkpoint: str | os.PathLike,
    clip: str | os.PathLike,
    *,
    decoder: DecoderConfig | None = None,
    heads: int | None = None,
    seed: int = 0,
) -> ViTSeg:
    """ViTSeg from a timm ViT checkpoint (safetensors or a plain state dict) and CLIP weights (what
    `clipseg.load_model` takes as ``clip=``: OpenAI's ViT-B-16.pt, a transformers CLIP directory or hub id).

    `decoder` defaults to the paper's (D = 64, blocks 3, 7, 9). The decoder and the frozen image projection are
    drawn at random from `seed`."""
    vit_state = read_state_dict(vit_checkpoint)
    visual, unsupported = timm_vit_to_ours(vit_state)
    if unsupported:
        raise ValueError(f"{vit_checkpoint}: keys this ViT cannot hold: {sorted(unsupported)[:8]}")
    clip_state, _, text_config, tokenizer = load_clip(clip)
    vision_config = timm_vision_config(vit_state, heads=heads, output_dim=text_config.output_dim)
    config = CLIPSegConfig(
        vision=vision_config, text=text_config, decoder=decoder or DecoderConfig(extract_layers=(3, 7, 9))
    )
    text = {k: v for k, v in clip_state.items() if k.startswith("text.")}
    torch.manual_seed(seed)
    # The decoder and the frozen projection (timm has no counterpart; the original drew it too) stay random.
    model = build(
        lambda: ViTSeg(config, tokenizer=tokenizer),
        {**visual, **text},
        f"{vit_checkpoint} with CLIP {clip}",
        may_be_missing=("decoder.", "visual.proj", "proj_bias"),
    )
    return model.eval()
