"""Architecture configuration: three small frozen dataclasses and the presets of the released models.

Every config checks its values when it is made (types, bounds, divisibility), before any model is built: a
config file asking for 10^9 layers or zero heads is refused with a `ConfigError` naming the field and value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Activation = Literal["quick_gelu", "gelu"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Sane bounds (well above every published CLIP / ViT: ViT-bigG is 1664 wide, 48 blocks) that keep a hostile
# config from building a model that cannot fit in memory.
MAX_WIDTH = 16384
MAX_LAYERS = 256
MAX_MLP_WIDTH = 65536
MAX_IMAGE_SIZE = 4096
MAX_GRID = 256  # patches per side of the vision tower's input
MAX_VOCAB = 1_048_576
MAX_CONTEXT = 4096
_ACTIVATIONS = ("quick_gelu", "gelu")


class ConfigError(ValueError):
    """An architecture value out of range or of the wrong type. `key` is the field's dotted name (e.g.
    "text.layers"), so that readers of other layouts can name their own key instead (`renamed`)."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key} = {_show(value)}: expected {expected}")

    def renamed(self, key: str) -> ConfigError:
        """The same problem reported under another key name."""
        return ConfigError(key, self.value, self.expected)

    def within(self, section: str) -> ConfigError:
        """The same problem with `section.` in front of the key."""
        return self.renamed(f"{section}.{self.key}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(key: str, value: Any, low: int, high: int) -> None:
    """`value` must be an int (not a bool) in low..high."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(key, value, f"an integer in {low}..{high}")


def check_positive_float(key: str, value: Any, high: float = math.inf) -> None:
    """`value` must be a finite real number in (0, high)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < high):
        limit = "" if high == math.inf else f" below {high}"
        raise ConfigError(key, value, f"a finite number above 0{limit}")


def _check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
        raise ConfigError(key, value, "one of " + ", ".join(repr(choice) for choice in choices))


def _check_heads(key: str, heads: Any, width: int) -> None:
    check_int(key, heads, 1, width)
    if width % heads:
        raise ConfigError(key, heads, f"a divisor of the width {width}")


def _check_triple(key: str, values: Any, *, positive: bool) -> None:
    ok = isinstance(values, tuple) and len(values) == 3 and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive)
        for v in values
    )
    if not ok:
        raise ConfigError(key, values, "3 finite numbers" + (" above 0" if positive else "") + " (one per RGB channel)")


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

    def __post_init__(self) -> None:
        check_int("width", self.width, 1, MAX_WIDTH)
        check_int("layers", self.layers, 1, MAX_LAYERS)
        _check_heads("heads", self.heads, self.width)
        check_int("mlp_width", self.mlp_width, 1, MAX_MLP_WIDTH)
        check_int("image_size", self.image_size, 1, MAX_IMAGE_SIZE)
        check_int("patch_size", self.patch_size, 1, self.image_size)
        if self.image_size // self.patch_size > MAX_GRID:
            raise ConfigError("patch_size", self.patch_size, f"at least image_size / {MAX_GRID} (image_size {self.image_size})")
        check_int("output_dim", self.output_dim, 1, MAX_WIDTH)
        _check_choice("activation", self.activation, _ACTIVATIONS)
        check_positive_float("layer_norm_eps", self.layer_norm_eps, 1.0)
        _check_choice("patch_bias", self.patch_bias, (False, True))
        _check_choice("pre_norm", self.pre_norm, (False, True))

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

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, 1, MAX_VOCAB)
        check_int("context_length", self.context_length, 2, MAX_CONTEXT)
        check_int("width", self.width, 1, MAX_WIDTH)
        check_int("layers", self.layers, 1, MAX_LAYERS)
        _check_heads("heads", self.heads, self.width)
        check_int("mlp_width", self.mlp_width, 1, MAX_MLP_WIDTH)
        check_int("output_dim", self.output_dim, 1, MAX_WIDTH)
        _check_choice("activation", self.activation, _ACTIVATIONS)
        check_positive_float("layer_norm_eps", self.layer_norm_eps, 1.0)


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

    def __post_init__(self) -> None:
        check_int("reduce_dim", self.reduce_dim, 1, MAX_WIDTH)
        _check_heads("heads", self.heads, self.reduce_dim)
        check_int("mlp_width", self.mlp_width, 1, MAX_MLP_WIDTH)
        layers = self.extract_layers
        if not isinstance(layers, tuple) or not layers or len(layers) > MAX_LAYERS:
            raise ConfigError("extract_layers", layers, "a non-empty list of CLIP block numbers")
        for layer in layers:
            check_int("extract_layers", layer, 0, MAX_LAYERS)
        if list(layers) != sorted(set(layers)):
            raise ConfigError("extract_layers", layers, "strictly increasing block numbers")
        check_int("cond_layer", self.cond_layer, 0, len(layers) - 1)
        _check_choice("head", self.head, ("simple", "refined"))
        check_positive_float("layer_norm_eps", self.layer_norm_eps, 1.0)


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
        for name, kind in (("vision", VisionConfig), ("text", TextConfig), ("decoder", DecoderConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(name, getattr(self, name), f"a {kind.__name__}")
        layers = self.decoder.extract_layers
        if layers[0] < 1 or layers[-1] >= self.vision.layers:
            if self.vision.layers < 2:
                raise ConfigError("vision.layers", self.vision.layers, "at least 2 (the decoder reads blocks 1..)")
            raise ConfigError(
                "decoder.extract_layers", layers, f"0-based CLIP blocks in 1..{self.vision.layers - 1}"
            )
        if self.vision.output_dim != self.text.output_dim:
            raise ConfigError(
                "text.output_dim", self.text.output_dim,
                f"the vision output_dim {self.vision.output_dim} (the conditional vector lives in one space)",
            )
        if self.decoder.head == "refined" and self.vision.patch_size % 4:
            raise ConfigError("vision.patch_size", self.vision.patch_size, "a multiple of 4 for the refined head")
        check_int("image_size", self.image_size, 1, MAX_IMAGE_SIZE)
        if self.image_size // self.vision.patch_size > MAX_GRID or self.image_size < self.vision.patch_size:
            raise ConfigError(
                "image_size", self.image_size,
                f"{self.vision.patch_size}..{MAX_GRID * self.vision.patch_size} for patch size {self.vision.patch_size}",
            )
        _check_triple("image_mean", self.image_mean, positive=False)
        _check_triple("image_std", self.image_std, positive=True)

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
    def from_dict(cls, data: Mapping[str, Any]) -> CLIPSegConfig:
        """The config `to_dict` wrote (JSON types: lists for tuples). Unknown or invalid fields raise a
        `ConfigError` naming the dotted key."""
        sections = {"vision": VisionConfig, "text": TextConfig, "decoder": DecoderConfig}
        values = _known_fields(cls, data, "")
        for name, kind in sections.items():
            if name in values:
                fields = _known_fields(kind, values[name], f"{name}.")
                try:
                    values[name] = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
                except ConfigError as error:
                    raise error.within(name) from None
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _known_fields(kind: type, data: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or "config", data, "a mapping of field names to values")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ConfigError(prefix + unknown[0], data[unknown[0]], f"one of the fields {', '.join(sorted(known))}")
    return dict(data)


PRESETS: dict[str, CLIPSegConfig] = {
    "rd64": CLIPSegConfig(),
    "rd64-refined": CLIPSegConfig(decoder=DecoderConfig(head="refined")),
    "rd16": CLIPSegConfig(decoder=DecoderConfig(reduce_dim=16)),
    "rd128": CLIPSegConfig(decoder=DecoderConfig(reduce_dim=128)),
}
