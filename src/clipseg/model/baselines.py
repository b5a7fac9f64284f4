"""The paper's two baselines, with CLIPSeg's interface so that the trainer and the evaluation run them unchanged.

- `CLIPDeconv` (the original ``CLIPDenseBaseline``): CLIP's activation after block 9 only -> ``reduce`` (width -> D)
  -> FiLM -> ``reduce2`` (Linear D -> D2, ReLU, Linear D2 -> D) -> CLS dropped -> one ConvTranspose2d(D, 1, patch,
  stride patch). No transformer block. The paper uses D = D2 = 64.
- `ViTSeg` (the original ``VITDensePredT``): the CLIPSeg decoder on an ImageNet ViT-B/16 (timm's
  ``vit_base_patch16_384``), with CLIP's text transformer for text prompts. As in the original, inputs are resized
  to the backbone's 384 x 384 (nearest neighbour) and logits back to the input size (nearest); the image embedding
  used for visual prompts is the ViT's CLS token through a randomly drawn, frozen 768 -> 512 linear layer (the
  original replaced timm's classifier by such a layer and froze it); images are normalised with the ImageNet
  statistics the original's data pipeline used (timm's weights were trained with mean = std = 0.5).

Both keep CLIPSeg's methods (``encode_text``, ``encode_image``, ``extract_features``, ``decode``, ``forward``) and
train only the decoder. `clipseg.checkpoints.vitseg.build_vitseg` assembles ViTSeg from a timm checkpoint and CLIP
weights; ``save_pretrained`` / `clipseg.load_model` round-trip both.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .clipseg import CLIPSeg
from .config import CLIPSegConfig, DecoderConfig, TextConfig, VisionConfig

CLIP_DECONV_FORMAT = "clip-deconv"
VITSEG_FORMAT = "vitseg"

VIT_B16_384 = VisionConfig(
    width=768,
    layers=12,
    heads=12,
    mlp_width=3072,
    patch_size=16,
    image_size=384,
    output_dim=512,
    activation="gelu",
    layer_norm_eps=1e-6,
    patch_bias=True,
    pre_norm=False,
)
"""timm's ``vit_base_patch16_384`` as a `VisionConfig`."""


class DeconvDecoder(nn.Module):
    """CLIP-Deconv's head: reduce, FiLM, a two-layer MLP, and a transposed convolution (no attention)."""

    def __init__(self, width: int, conditional_dim: int, reduce_dim: int, reduce2_dim: int, patch_size: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(width, reduce_dim)
        self.film_mul = nn.Linear(conditional_dim, reduce_dim)
        self.film_add = nn.Linear(conditional_dim, reduce_dim)
        self.reduce2 = nn.Sequential(nn.Linear(reduce_dim, reduce2_dim), nn.ReLU(), nn.Linear(reduce2_dim, reduce_dim))
        self.trans_conv = nn.ConvTranspose2d(reduce_dim, 1, patch_size, stride=patch_size)

    def forward(
        self,
        features: list[torch.Tensor],
        conditional: torch.Tensor,
        grid: tuple[int, int],
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The one extracted activation (B_img, 1 + rows*cols, width) and conditionals (B, dim) -> logits."""
        x = self.reduce(features[-1])
        if image_index is not None:
            x = x[image_index]
        x = self.film_mul(conditional)[:, None] * x + self.film_add(conditional)[:, None]
        x = self.reduce2(x)
        tokens = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)  # CLS token dropped
        return self.trans_conv(tokens)


class CLIPDeconv(CLIPSeg):
    """CLIP-Deconv: frozen CLIP, the activation after one block (9), FiLM and a deconvolution.

    `config.decoder.extract_layers` must name exactly one block; `config.decoder.reduce_dim` is D and
    `reduce2_dim` is D2.
    """

    config_format = CLIP_DECONV_FORMAT

    def __init__(self, config: CLIPSegConfig, *, reduce2_dim: int = 64, tokenizer=None) -> None:
        if len(config.decoder.extract_layers) != 1:
            raise ValueError(
                f"CLIP-Deconv reads exactly one CLIP block, got extract_layers={config.decoder.extract_layers}"
            )
        super().__init__(config, tokenizer)
        self.reduce2_dim = reduce2_dim
        self.decoder = DeconvDecoder(
            config.vision.width,
            config.vision.output_dim,
            config.decoder.reduce_dim,
            reduce2_dim,
            config.vision.patch_size,
        )

    @staticmethod
    def default_config(vision: VisionConfig | None = None, text: TextConfig | None = None) -> CLIPSegConfig:
        """The paper's setting on CLIP ViT-B/16: block 9, D = 64."""
        return CLIPSegConfig(
            vision=vision or VisionConfig(),
            text=text or TextConfig(),
            decoder=DecoderConfig(reduce_dim=64, extract_layers=(9,)),
        )

    @classmethod
    def from_saved_config(cls, saved: dict[str, Any], tokenizer=None) -> CLIPDeconv:
        saved = dict(saved)
        reduce2_dim = int(saved.pop("reduce2_dim"))
        return cls(CLIPSegConfig.from_dict(saved), reduce2_dim=reduce2_dim, tokenizer=tokenizer)

    def saved_config(self) -> dict[str, Any]:
        return {"reduce2_dim": self.reduce2_dim, **self.config.to_dict()}


class ViTSeg(CLIPSeg):
    """ViTSeg: CLIPSeg's decoder and CLIP's text tower on an ImageNet ViT (`config.vision` in timm's flavour)."""

    config_format = VITSEG_FORMAT

    def __init__(self, config: CLIPSegConfig, *, tokenizer=None) -> None:
        super().__init__(config, tokenizer)
        # The original's replacement classifier: Linear(width, 512) with bias, random and frozen.
        self.proj_bias = nn.Parameter(torch.zeros(config.vision.output_dim), requires_grad=False)
        bound = config.vision.width**-0.5
        with torch.no_grad():
            self.visual.proj.uniform_(-bound, bound)
            self.proj_bias.uniform_(-bound, bound)

    @staticmethod
    def default_config(text: TextConfig | None = None) -> CLIPSegConfig:
        """ViT-B/16 at 384 (timm), CLIP's text tower, the paper's decoder (D = 64, blocks 3, 7, 9)."""
        return CLIPSegConfig(
            vision=VIT_B16_384, text=text or TextConfig(), decoder=DecoderConfig(extract_layers=(3, 7, 9))
        )

    @property
    def backbone_size(self) -> int:
        return self.config.vision.image_size

    def _to_backbone(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.backbone_size
        if tuple(pixel_values.shape[-2:]) == (size, size):
            return pixel_values
        return F.interpolate(pixel_values, size=(size, size), mode="nearest")

    def encode_image(self, pixel_values: torch.Tensor, *, token_mask=None, token_mask_mode="cls_last") -> torch.Tensor:
        """Support images -> (B, 512): the ViT's CLS token (after its final norm) through the frozen linear layer."""
        embedding = super().encode_image(
            self._to_backbone(pixel_values.to(self.device)), token_mask=token_mask, token_mask_mode=token_mask_mode
        )
        return embedding + self.proj_bias

    def extract_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Activations of the ViT at its own input size (the image is resized to it first)."""
        return super().extract_features(self._to_backbone(pixel_values.to(self.device)))

    def decode(self, features, conditional, *, output_size, image_index=None) -> torch.Tensor:
        """Decoder at the backbone's grid, logits resized (nearest) to `output_size`."""
        size = self.backbone_size
        logits = super().decode(features, conditional, output_size=(size, size), image_index=image_index)
        if tuple(output_size) != (size, size):
            logits = F.interpolate(logits, size=tuple(output_size), mode="nearest")
        return logits

    @classmethod
    def from_saved_config(cls, saved: dict[str, Any], tokenizer=None) -> ViTSeg:
        return cls(CLIPSegConfig.from_dict(saved), tokenizer=tokenizer)
