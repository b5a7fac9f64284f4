"""Architecture configuration: three small frozen dataclasses and the presets of the released models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Activation = Literal["quick_gelu", "gelu"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VisionConfig:
    """A ViT image encoder. Defaults: OpenAI CLIP ViT-B/16."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    patch_size: int = 16
    image_size: int = 224  # the position embeddings were trained for this size; other sizes resample them
    output_dim: int = 512
    activation: Activation = "quick_gelu"
    layer_norm_eps: float = 1e-5
    patch_bias: bool = False  # CLIP's patch embedding has no bias; ImageNet ViTs (timm) have one
    pre_norm: bool = True  # CLIP applies `ln_pre` to the embedded tokens; timm ViTs do not

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextConfig:
    """CLIP's causal text transformer. Defaults: OpenAI CLIP ViT-B/16's text tower."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_width: int = 2048
    output_dim: int = 512
    activation: Activation = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class DecoderConfig:
    """The CLIPSeg decoder (paper Fig. 2). Defaults: the released rd64 model."""

    reduce_dim: int = 64
    heads: int = 4
    mlp_width: int = 2048  # torch's TransformerEncoderLayer default, kept even for reduce_dim 16/64
    # 0-based CLIP blocks whose output feeds the decoder. (3, 6, 9) is what the original Quickstart and the
    # hub conversions run the released weights with; the paper's training configs say (3, 7, 9).
    extract_layers: tuple[int, ...] = (3, 6, 9)
    cond_layer: int = 0
    head: Literal["simple", "refined"] = "simple"
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class CLIPSegConfig:
    """The whole model plus the input preprocessing the weights expect."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_size: int = 352
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        layers = self.decoder.extract_layers
        if not layers or list(layers) != sorted(set(layers)):
            raise ValueError(f"extract_layers must be strictly increasing, got {layers}")
        if layers[0] < 1 or layers[-1] >= self.vision.layers:
            raise ValueError(
                f"extract_layers must lie in 1..{self.vision.layers - 1} (0-based CLIP blocks), got {layers}"
            )
        if not 0 <= self.decoder.cond_layer < len(layers):
            raise ValueError(f"cond_layer must index extract_layers, got {self.decoder.cond_layer}")
        if self.vision.output_dim != self.text.output_dim:
            raise ValueError("vision and text output_dim must agree (the conditional vector lives in one space)")
        if self.decoder.head == "refined" and self.vision.patch_size % 4:
            raise ValueError("the refined head needs a patch size divisible by 4")

    def replace(self, **changes: Any) -> CLIPSegConfig:
        """A copy with top-level fields replaced; `extract_layers=` and other decoder fields are accepted too."""
        decoder_fields = {f.name for f in dataclasses.fields(DecoderConfig)}
        decoder_changes = {k: changes.pop(k) for k in list(changes) if k in decoder_fields}
        if "extract_layers" in decoder_changes:
            decoder_changes["extract_layers"] = tuple(decoder_changes["extract_layers"])
        decoder = dataclasses.replace(self.decoder, **decoder_changes)
        return dataclasses.replace(self, decoder=decoder, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLIPSegConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown CLIPSeg config fields: {sorted(unknown)}")
        decoder = dict(data.get("decoder", {}))
        if "extract_layers" in decoder:
            decoder["extract_layers"] = tuple(decoder["extract_layers"])
        return cls(
            vision=VisionConfig(**data.get("vision", {})),
            text=TextConfig(**data.get("text", {})),
            decoder=DecoderConfig(**decoder),
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k not in ("vision", "text", "decoder")},
        )


PRESETS: dict[str, CLIPSegConfig] = {
    "rd64": CLIPSegConfig(),
    "rd64-refined": CLIPSegConfig(decoder=DecoderConfig(head="refined")),
    "rd16": CLIPSegConfig(decoder=DecoderConfig(reduce_dim=16)),
    "rd128": CLIPSegConfig(decoder=DecoderConfig(reduce_dim=128)),
}
