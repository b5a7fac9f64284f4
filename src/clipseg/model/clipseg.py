"""CLIPSeg: a frozen CLIP whose activations feed a small FiLM-conditioned decoder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .clip import TextTransformer, TokenMaskMode, VisionTransformer
from .config import CLIPSegConfig
from .decoder import Decoder
from .interface import check_pairing

if TYPE_CHECKING:
    from ..thresholds import Thresholds
    from ..tokenizer import CLIPTokenizer

CONFIG_FORMAT = "clipseg"
# Writers of other checkpoint layouts ("transformers", "original"). The converters live at the edge, beside the
# readers, and register here (clipseg.checkpoints.publish, imported with clipseg): model/ converts no layouts.
LAYOUT_WRITERS: dict[str, Callable[[CLIPSeg, str | os.PathLike], Path]] = {}
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CLIPSeg(nn.Module):
    """The CLIPSeg model.

    `visual` and `text` are OpenAI CLIP's towers (frozen: `requires_grad_(False)`), `decoder` is the trainable
    CLIPSeg decoder. Inputs are normalised pixels (B, 3, H, W) of any size; conditional vectors are (B, 512) CLIP
    embeddings of a text prompt, of a (visually prompt-engineered) support image, or a mix of both.
    """

    config_format: ClassVar[str] = CONFIG_FORMAT  # the "format" of config.json; baselines have their own

    def __init__(self, config: CLIPSegConfig, tokenizer: CLIPTokenizer | None = None) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.text = TextTransformer(config.text)
        self.decoder = Decoder(config)
        self.visual.requires_grad_(False)
        self.text.requires_grad_(False)
        self._tokenizer = tokenizer
        # Calibrated per-prompt thresholds (`clipseg.thresholds.Thresholds`) that came with the weights, if any.
        self.thresholds: Thresholds | None = None

    @property
    def tokenizer(self) -> CLIPTokenizer:
        """The CLIP tokenizer that came with the weights (OpenAI's vocabulary by default)."""
        if self._tokenizer is None:
            from ..tokenizer import CLIPTokenizer

            self._tokenizer = CLIPTokenizer.default()
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self.decoder.film_mul.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.film_mul.weight.dtype

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) from `tokenizer` -> conditional vectors (B, 512)."""
        return self.text(token_ids.to(self.device))

    def encode_image(
        self,
        pixel_values: torch.Tensor,
        *,
        token_mask: torch.Tensor | None = None,
        token_mask_mode: TokenMaskMode = "cls_last",
    ) -> torch.Tensor:
        """Normalised support images (B, 3, H, W) -> conditional vectors (B, 512), the CLIP image embedding.
        `token_mask` (B, H, W) enables CLIP-internal attention masking (see `VisionTransformer.forward`)."""
        return self.visual(pixel_values.to(self.device), token_mask=token_mask, token_mask_mode=token_mask_mode)

    def extract_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images (B, 3, H, W) -> CLIP activations after the decoder's extract layers, each
        (B, 1 + rows*cols, width). Runs the backbone once, and no block past the deepest extract layer."""
        return self.visual.forward_features(pixel_values.to(self.device), self.config.decoder.extract_layers)

    def decode(
        self,
        features: list[torch.Tensor],
        conditional: torch.Tensor,
        *,
        output_size: tuple[int, int],
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder only: features of B_img images and B conditional vectors -> logits (B, 1, *output_size).

        Prompt b is paired with image `image_index[b]`; without `image_index` pairing is 1:1, or every prompt
        reads the single image when B_img == 1."""
        grid = self.visual.grid_for(*output_size)
        conditional = conditional.to(device=self.device, dtype=features[0].dtype)
        check_pairing(features[0].shape[0], conditional.shape[0], image_index)
        logits = self.decoder(features, conditional, grid, image_index)
        if logits.shape[-2:] != tuple(output_size):
            # Input sides that are not multiples of the patch size: the head covers only whole patches.
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
        return logits

    def forward(self, pixel_values: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) and conditional vectors (B, 512) -> logits (B, 1, H, W)."""
        if pixel_values.shape[0] != conditional.shape[0]:
            raise ValueError(
                f"{pixel_values.shape[0]} images but {conditional.shape[0]} conditional vectors (must match)"
            )
        features = self.extract_features(pixel_values)
        return self.decode(features, conditional, output_size=tuple(pixel_values.shape[-2:]))

    @classmethod
    def from_saved_config(cls, saved: dict[str, Any], tokenizer: CLIPTokenizer | None = None) -> CLIPSeg:
        """A randomly initialised model from the fields of a config.json written by `save_pretrained`."""
        return cls(CLIPSegConfig.from_dict(saved), tokenizer)

    def saved_config(self) -> dict[str, Any]:
        """The fields `save_pretrained` writes to config.json (besides "format")."""
        return self.config.to_dict()

    def save_pretrained(self, directory: str | os.PathLike, layout: str = "clipseg") -> Path:
        """Write weights (safetensors), config and tokenizer files to `directory`; `clipseg.load_model` reads it.

        `layout` "transformers" writes transformers' CLIPSeg layout instead (`CLIPSegForImageSegmentation.
        from_pretrained`, transformers.js, the hub), "original" the original repository's decoder file: see
        `clipseg.checkpoints.publish.save_model`."""
        if layout != "clipseg":
            if layout not in LAYOUT_WRITERS:
                known = ", ".join(["clipseg", *LAYOUT_WRITERS]) if LAYOUT_WRITERS else "clipseg (import clipseg first)"
                raise ValueError(f"unknown layout {layout!r}; expected one of {known}")
            return LAYOUT_WRITERS[layout](self, directory)
        from ..checkpoints.io import write_safetensors
        from ..fileio import write_text

        state = self.state_dict()
        if not all(isinstance(value, torch.Tensor) for value in state.values()):
            raise ValueError("this model holds int8-quantised layers, which are for inference: save the float model")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        write_safetensors(state, directory / WEIGHTS_NAME)
        if self.thresholds is not None:  # calibrated thresholds travel with the weights
            self.thresholds.save(directory / "thresholds.json")
        # The config goes last: a directory with a config.json is complete.
        config = {"format": self.config_format, **self.saved_config()}
        write_text(directory / CONFIG_NAME, json.dumps(config, indent=2))
        return directory
