"""The CLIPSeg decoder (paper Fig. 2): reduce CLIP activations, FiLM-condition, three transformer blocks, upsample."""

from __future__ import annotations

import torch
from torch import nn

from .config import CLIPSegConfig
from .onednn import Linear
from .transformer import DecoderBlock


class PatchConvTranspose2d(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d(in, out, k, stride=k)`: every input pixel paints its own k x k output patch, so the
    layer is one matrix product and a reshape (several times faster on CPU than the generic kernel; same
    parameters, same result up to float rounding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, rows, cols = x.shape
        k, out = self.kernel_size[0], self.out_channels
        pixels = x.permute(0, 2, 3, 1).reshape(-1, channels)
        patches = torch.addmm(self.bias.repeat_interleave(k * k), pixels, self.weight.reshape(channels, -1))
        patches = patches.view(batch, rows, cols, out, k, k).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(batch, out, rows * k, cols * k)


def make_head(reduce_dim: int, patch_size: int, kind: str) -> nn.Module:
    """Tokens (B, D, rows, cols) -> logits (B, 1, rows*patch, cols*patch)."""
    if kind == "simple":
        return PatchConvTranspose2d(reduce_dim, 1, patch_size)
    if kind == "refined":
        step = patch_size // 4
        return nn.Sequential(
            nn.Conv2d(reduce_dim, reduce_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            PatchConvTranspose2d(reduce_dim, reduce_dim // 2, step),
            nn.ReLU(inplace=True),
            PatchConvTranspose2d(reduce_dim // 2, 1, step),
        )
    raise ValueError(f"unknown decoder head {kind!r} (simple or refined)")


class Decoder(nn.Module):
    def __init__(self, config: CLIPSegConfig) -> None:
        super().__init__()
        dec, width = config.decoder, config.vision.width
        self.cond_layer = dec.cond_layer
        self.film_mul = Linear(config.vision.output_dim, dec.reduce_dim)
        self.film_add = Linear(config.vision.output_dim, dec.reduce_dim)
        depth = len(dec.extract_layers)
        self.reduces = nn.ModuleList(Linear(width, dec.reduce_dim) for _ in range(depth))
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
