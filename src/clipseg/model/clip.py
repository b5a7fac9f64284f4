"""CLIP's two towers: the ViT image encoder and the causal text encoder (OpenAI parameter names)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig, VisionConfig
from .transformer import Transformer

TokenMaskMode = Literal["cls_last", "cls_all", "all_all"]

_POSITION_CACHE_SIZE = 8


def _normal(*shape: int, std: float) -> nn.Parameter:
    """A N(0, std²) parameter. Left unset on the meta device, where the loader assigns the checkpoint's tensors
    (and where `normal_` would import torch._dynamo: ~1 s of every first model load)."""
    tensor = torch.empty(*shape)
    if tensor.device.type != "meta":
        tensor.normal_(std=std)
    return nn.Parameter(tensor)


class VisionTransformer(nn.Module):
    """ViT that returns intermediate activations and runs no block past the deepest one asked for."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        width, scale = config.width, config.width**-0.5
        self.conv1 = nn.Conv2d(3, width, config.patch_size, config.patch_size, bias=config.patch_bias)
        self.class_embedding = _normal(width, std=scale)
        self.positional_embedding = _normal(config.grid_size**2 + 1, width, std=scale)
        self.ln_pre = nn.LayerNorm(width, eps=config.layer_norm_eps) if config.pre_norm else nn.Identity()
        self.transformer = Transformer(
            width, config.layers, config.heads, config.mlp_width, config.activation, config.layer_norm_eps
        )
        self.ln_post = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.proj = _normal(width, config.output_dim, std=scale)
        self._position_cache: dict[tuple, torch.Tensor] = {}

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        patch = self.config.patch_size
        if height < patch or width < patch:
            raise ValueError(f"input {height}x{width} is smaller than one {patch}x{patch} patch")
        return height // patch, width // patch

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for a (rows, cols) patch grid: the trained square grid resampled bicubically
        (align_corners=False, CLS position kept), cached per grid while the weights are unchanged."""
        table = self.positional_embedding
        trained = self.config.grid_size
        if grid == (trained, trained):
            return table
        if table.requires_grad and torch.is_grad_enabled():
            return self._resample_positions(grid)
        version = 0 if table.is_inference() else table._version  # inference tensors keep no version counter
        key = (grid, table.device, table.dtype, table.data_ptr(), version)
        cached = self._position_cache.get(key)
        if cached is None:
            if len(self._position_cache) >= _POSITION_CACHE_SIZE:
                self._position_cache.pop(next(iter(self._position_cache)))
            cached = self._position_cache[key] = self._resample_positions(grid).detach()
        return cached

    def _resample_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        table, trained = self.positional_embedding, self.config.grid_size
        patches = table[1:].T.reshape(1, -1, trained, trained)
        # bicubic is not implemented for half precision on every device: resample in float32
        patches = F.interpolate(patches.float(), size=grid, mode="bicubic", align_corners=False)
        patches = patches.reshape(table.shape[1], -1).T.to(table.dtype)
        return torch.cat([table[:1], patches])

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pixels (B, 3, H, W) -> tokens (B, 1 + rows*cols, width) after `ln_pre`, and the patch grid."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must have shape (B, 3, H, W), got {tuple(pixel_values.shape)}")
        grid = self.grid_for(*pixel_values.shape[-2:])
        patches = self.conv1(pixel_values.to(self.conv1.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # row-major patch order
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1) + self.positions(grid).to(patches.dtype)
        return self.ln_pre(tokens), grid

    def forward_features(self, pixel_values: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The residual stream (CLS first, no LayerNorm) after each 0-based block in `layers`; blocks deeper
        than `max(layers)` are not run."""
        x, _ = self.embed(pixel_values)
        wanted = set(layers)
        features = []
        for index, block in enumerate(self.transformer.resblocks[: max(layers) + 1]):
            x = block(x)
            if index in wanted:
                features.append(x)
        return features

    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        token_mask: torch.Tensor | None = None,
        token_mask_mode: TokenMaskMode = "cls_last",
    ) -> torch.Tensor:
        """Image embedding (B, output_dim): the CLS token after `ln_post`, projected.

        `token_mask` (B, H, W) or (B, rows, cols) with values in [0, 1] switches on the CLIP-internal masking of
        the paper's visual prompt engineering: the scaled attention logits of the CLS row (`cls_*`) or of every
        patch row (`all_all`) are multiplied by the mask, in the last block or in all blocks."""
        x, grid = self.embed(pixel_values)
        logit_mask = None if token_mask is None else self._attention_logit_mask(token_mask, grid, token_mask_mode)
        blocks = self.transformer.resblocks
        for index, block in enumerate(blocks):
            masked = logit_mask is not None and (token_mask_mode != "cls_last" or index == len(blocks) - 1)
            x = block(x, logit_mask=logit_mask if masked else None)
        return self.ln_post(x[:, 0]) @ self.proj

    @staticmethod
    def _attention_logit_mask(token_mask: torch.Tensor, grid: tuple[int, int], mode: TokenMaskMode) -> torch.Tensor:
        if token_mask.ndim != 3:
            raise ValueError(f"token_mask must have shape (B, H, W), got {tuple(token_mask.shape)}")
        patch_mask = F.interpolate(token_mask[:, None].float(), size=grid, mode="nearest").flatten(1)
        batch, tokens = patch_mask.shape[0], patch_mask.shape[1] + 1
        logit_mask = torch.ones(batch, tokens, tokens, device=token_mask.device)
        if mode in ("cls_last", "cls_all"):
            logit_mask[:, 0, 1:] = patch_mask
        elif mode == "all_all":
            logit_mask[:, 1:, 1:] = patch_mask[:, None, :]
        else:
            raise ValueError(f"token_mask_mode must be cls_last, cls_all or all_all, got {mode!r}")
        return logit_mask


class TextTransformer(nn.Module):
    """CLIP's causal text encoder; the embedding is read at the first end-of-text token (the largest id)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(
            config.vocab_size, config.width, _weight=_normal(config.vocab_size, config.width, std=0.02)
        )
        self.positional_embedding = _normal(config.context_length, config.width, std=0.01)
        self.transformer = Transformer(
            config.width, config.layers, config.heads, config.mlp_width, config.activation, config.layer_norm_eps
        )
        self.ln_final = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.text_projection = _normal(config.width, config.output_dim, std=config.width**-0.5)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L <= context_length) -> text embedding (B, output_dim)."""
        if token_ids.ndim != 2 or token_ids.shape[1] > self.config.context_length:
            raise ValueError(
                f"token_ids must have shape (B, L<={self.config.context_length}), got {tuple(token_ids.shape)}"
            )
        # Causal attention: tokens after the last end-of-text cannot change any pooled output, so skip them.
        length = int(token_ids.argmax(dim=-1).max()) + 1
        return self.forward_untrimmed(token_ids[:, :length])

    def forward_untrimmed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """`forward` over all L tokens: no shape depends on the ids' values (the form ONNX export traces)."""
        eot = token_ids.argmax(dim=-1)
        x = self.token_embedding(token_ids) + self.positional_embedding[: token_ids.shape[1]]
        for block in self.transformer.resblocks:
            x = block(x, causal=True)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        return self.ln_final(pooled) @ self.text_projection
