"""The CLIPSeg decoder (paper Fig. 2): reduce CLIP activations, FiLM-condition, three transformer blocks, upsample."""

from __future__ import annotations

import torch
from torch import nn

from .config import CLIPSegConfig
from .transformer import DecoderBlock


def make_head(reduce_dim: int, patch_size: int, kind: str) -> nn.Module:
    """Tokens (B, D, rows, cols) -> logits (B, 1, rows*patch, cols*patch)."""
    if kind == "simple":
        return nn.ConvTranspose2d(reduce_dim, 1, patch_size, stride=patch_size)
    if kind == "refined":
        step = patch_size // 4
        return nn.Sequential(
            nn.Conv2d(reduce_dim, reduce_dim, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(reduce_dim, reduce_dim // 2, step, stride=step),
            nn.ReLU(),
            nn.ConvTranspose2d(reduce_dim // 2, 1, step, stride=step),
        )
    raise ValueError(f"unknown decoder head {kind!r} (simple or refined)")


class Decoder(nn.Module):
    def __init__(self, config: CLIPSegConfig) -> None:
        super().__init__()
        dec, width = config.decoder, config.vision.width
        self.cond_layer = dec.cond_layer
        self.film_mul = nn.Linear(config.vision.output_dim, dec.reduce_dim)
        self.film_add = nn.Linear(config.vision.output_dim, dec.reduce_dim)
        depth = len(dec.extract_layers)
        self.reduces = nn.ModuleList(nn.Linear(width, dec.reduce_dim) for _ in range(depth))
        self.blocks = nn.ModuleList(
            DecoderBlock(dec.reduce_dim, dec.heads, dec.mlp_width, dec.layer_norm_eps) for _ in range(depth)
        )
        self.trans_conv = make_head(dec.reduce_dim, config.vision.patch_size, dec.head)

    def forward(
        self,
        features: list[torch.Tensor],
        conditional: torch.Tensor,
        grid: tuple[int, int],
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """CLIP activations (shallow to deep, each (B_img, 1 + rows*cols, width)) and conditional vectors
        (B, output_dim) -> logits (B, 1, rows*patch, cols*patch). Prompt b reads image `image_index[b]`."""
        x = None
        # Reduce per image before pairing with prompts: the reduction does not depend on the prompt.
        for step, (activation, reduce, block) in enumerate(zip(reversed(features), self.reduces, self.blocks)):
            reduced = reduce(activation)
            if image_index is not None:
                reduced = reduced[image_index]
            x = reduced if x is None else reduced + x
            if step == self.cond_layer:
                x = self.film_mul(conditional)[:, None] * x + self.film_add(conditional)[:, None]
            x = block(x)
        tokens = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)  # CLS token dropped
        return self.trans_conv(tokens)
