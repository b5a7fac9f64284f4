"""What a `clipseg.Predictor` (and an evaluation) can run: `CLIPSeg` and its baselines in PyTorch, `OnnxModel` on
onnxruntime. Both satisfy `SegmentationModel` structurally; neither inherits from it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from ..tokenizer import CLIPTokenizer
    from .clip import TokenMaskMode
    from .config import CLIPSegConfig


@runtime_checkable
class SegmentationModel(Protocol):
    """A CLIP backbone, its two encoders and a decoder, taking and returning torch tensors.

    `config` gives the input size, normalisation and text context; `tokenizer` turns prompts into the token ids
    `encode_text` reads."""

    config: CLIPSegConfig

    @property
    def tokenizer(self) -> CLIPTokenizer: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def eval(self) -> SegmentationModel: ...

    def extract_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images (B, 3, H, W) -> the activations the decoder reads."""
        ...

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> conditional vectors (B, D)."""
        ...

    def encode_image(
        self,
        pixel_values: torch.Tensor,
        *,
        token_mask: torch.Tensor | None = None,
        token_mask_mode: TokenMaskMode = "cls_last",
    ) -> torch.Tensor:
        """Normalised support images (B, 3, H, W) -> conditional vectors (B, D)."""
        ...

    def decode(
        self,
        features: list[torch.Tensor],
        conditional: torch.Tensor,
        *,
        output_size: tuple[int, int],
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Features of B_img images and B conditional vectors -> logits (B, 1, *output_size); pairing as
        `check_pairing` describes."""
        ...


def check_pairing(images: int, prompts: int, image_index: torch.Tensor | None) -> None:
    """The pairing rule of `decode`: prompt b reads image `image_index[b]`; without `image_index` pairing is 1:1
    (as many prompts as images), or every prompt reads the single image. Raises ValueError otherwise."""
    if image_index is None:
        if images not in (1, prompts):
            raise ValueError(f"{images} images and {prompts} conditional vectors: pass image_index")
        return
    if tuple(image_index.shape) != (prompts,) or (
        prompts and (int(image_index.min()) < 0 or int(image_index.max()) >= images)
    ):
        raise ValueError(f"image_index must hold {prompts} indices in [0, {images}), got {image_index.tolist()}")
