"""timm-format ImageNet ViT checkpoints (e.g. ``vit_base_patch16_384``) -> our `VisionTransformer` keys.

timm's ViT is the same computation as CLIP's image tower with four switches (`VisionConfig`): a bias on the patch
embedding, no LayerNorm before the blocks, exact GELU and LayerNorm eps 1e-6. Its q/k/v projection is already
packed like ours. The converted keys live under ``visual.`` with OpenAI CLIP's names; ``visual.proj`` has no timm
counterpart (ViTSeg draws it at random and freezes it, as the original did with its replaced ``head``).

Swap table (timm -> ours, below ``visual.``)::

    patch_embed.proj.{weight,bias}    conv1.{weight,bias}
    cls_token (1, 1, D)               class_embedding (D,)
    pos_embed (1, 1 + N, D)           positional_embedding (1 + N, D)
    blocks.i.norm1 / norm2            transformer.resblocks.i.ln_1 / ln_2
    blocks.i.attn.qkv.{weight,bias}   transformer.resblocks.i.attn.in_proj_{weight,bias}
    blocks.i.attn.proj                transformer.resblocks.i.attn.out_proj
    blocks.i.mlp.fc1 / fc2            transformer.resblocks.i.mlp.c_fc / c_proj
    norm                              ln_post

The ImageNet classifier (``head.*``, ``pre_logits.*``) is dropped; anything else (distillation tokens, layer scale,
registers) is reported as unsupported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from ..model.config import VisionConfig
from .convert import ConversionError, StateDict

TIMM_IGNORED = re.compile(r"(head|pre_logits|head_drop)\.(weight|bias|fc\.weight|fc\.bias)")
_BLOCK_RULES = (
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"transformer.resblocks.\1.ln_1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"transformer.resblocks.\1.ln_2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"transformer.resblocks.\1.attn.in_proj_\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
    (r"patch_embed\.proj\.(weight|bias)", r"conv1.\1"),
    (r"norm\.(weight|bias)", r"ln_post.\1"),
)
SENTINEL_KEY = "patch_embed.proj.weight"


def is_timm_vit(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is in timm's ViT layout (detected by its patch-embedding key)."""
    return SENTINEL_KEY in state and "blocks.0.attn.qkv.weight" in state


def timm_vit_to_ours(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Convert a timm ViT state dict; returns (our ``visual.*`` tensors, unsupported keys)."""
    if not is_timm_vit(state):
        raise ConversionError("not a timm ViT checkpoint (no patch_embed.proj.weight / blocks.0.attn.qkv.weight)")
    out: StateDict = {}
    unsupported: list[str] = []
    for key, tensor in state.items():
        if key == "cls_token":
            out["visual.class_embedding"] = tensor.reshape(-1)
        elif key == "pos_embed":
            out["visual.positional_embedding"] = tensor.reshape(tensor.shape[-2], tensor.shape[-1])
        elif TIMM_IGNORED.fullmatch(key):
            continue
        else:
            for pattern, replacement in _BLOCK_RULES:
                if re.fullmatch(pattern, key):
                    out["visual." + re.sub(pattern, replacement, key)] = tensor
                    break
            else:
                unsupported.append(key)
    return out, unsupported


def timm_vision_config(
    state: Mapping[str, torch.Tensor], *, heads: int | None = None, output_dim: int = 512
) -> VisionConfig:
    """The `VisionConfig` of a timm ViT state dict, read from tensor shapes.

    Heads cannot be read from shapes; every standard timm ViT uses 64-dimensional heads, the default here.
    """
    patch = state["patch_embed.proj.weight"]
    width, patch_size = patch.shape[0], patch.shape[-1]
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    positions = state["pos_embed"].shape[-2] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ConversionError(f"pos_embed holds {positions} patch positions, not a square grid")
    mlp_width = state["blocks.0.mlp.fc1.weight"].shape[0]
    return VisionConfig(
        width=width,
        layers=layers,
        heads=heads if heads is not None else max(1, width // 64),
        mlp_width=mlp_width,
        patch_size=patch_size,
        image_size=grid * patch_size,
        output_dim=output_dim,
        activation="gelu",
        layer_norm_eps=1e-6,
        patch_bias="patch_embed.proj.bias" in state,
        pre_norm=False,
    )
