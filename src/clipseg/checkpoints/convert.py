"""Converters from foreign checkpoint layouts to ours: swap tables plus the few named special cases.

Our keys are OpenAI CLIP's (`visual.*`, text tower under `text.*`) and the original CLIPSeg decoder's
(`decoder.*`), so OpenAI and original-repo checkpoints need only prefixes; transformers' layout needs renaming,
its q/k/v projections packed into one `in_proj` and its projection matrices transposed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..model.config import CLIPSegConfig, ConfigError, DecoderConfig, TextConfig, VisionConfig

StateDict = dict[str, torch.Tensor]

# OpenAI's top-level text-tower keys; everything else of CLIP lives under `visual.`.
_OPENAI_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
OPENAI_IGNORED = frozenset({"logit_scale", "input_resolution", "context_length", "vocab_size"})

# transformers CLIP / CLIPSeg names -> ours, applied to keys with the tower prefix removed.
_HF_BLOCK_RULES = (
    (r"layer_norm1\.(weight|bias)", r"ln_1.\1"),
    (r"layer_norm2\.(weight|bias)", r"ln_2.\1"),
    (r"self_attn\.out_proj\.(weight|bias)", r"attn.out_proj.\1"),
    (r"mlp\.fc1\.(weight|bias)", r"mlp.c_fc.\1"),
    (r"mlp\.fc2\.(weight|bias)", r"mlp.c_proj.\1"),
)
_HF_VISION_RULES = (
    (r"embeddings\.class_embedding", "class_embedding"),
    (r"embeddings\.patch_embedding\.(weight|bias)", r"conv1.\1"),
    (r"embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"pre_layrnorm\.(weight|bias)", r"ln_pre.\1"),
    (r"post_layernorm\.(weight|bias)", r"ln_post.\1"),
)
_HF_TEXT_RULES = (
    (r"embeddings\.token_embedding\.weight", "token_embedding.weight"),
    (r"embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"final_layer_norm\.(weight|bias)", r"ln_final.\1"),
)
_HF_DECODER_RULES = (
    (r"film_(mul|add)\.(weight|bias)", r"film_\1.\2"),
    (r"reduces\.(\d+)\.(weight|bias)", r"reduces.\1.\2"),
    (r"transposed_convolution\.(weight|bias)", r"trans_conv.\1"),
    (r"transposed_convolution\.(\d+)\.(weight|bias)", r"trans_conv.\1.\2"),
    (r"layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"blocks.\1.self_attn.out_proj.\2"),
    (r"layers\.(\d+)\.layer_norm1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"layers\.(\d+)\.layer_norm2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"blocks.\1.linear1.\2"),
    (r"layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"blocks.\1.linear2.\2"),
)
_HF_IGNORED = re.compile(r"(.*\.)?(position_ids|logit_scale)")
_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")


class ConversionError(ValueError):
    """A checkpoint whose keys do not fit the layout it was detected as."""


def _rename(key: str, rules: Iterable[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        new, count = re.subn(f"^{pattern}$", replacement, key)
        if count:
            return new
    return None


def _pack_qkv(parts: dict[str, dict[str, torch.Tensor]], source: str) -> StateDict:
    """{'<layer>.<kind>': {'q': t, 'k': t, 'v': t}} -> {'<layer>.in_proj_<kind>': cat(q, k, v)}."""
    packed = {}
    for name, qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise ConversionError(f"{source}: {name} has only {sorted(qkv)} of the q/k/v projections")
        packed[name] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return packed


def _convert_hf_tower(state: Mapping[str, torch.Tensor], prefix: str, ours: str, rules, unused: list[str]) -> StateDict:
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        block = re.match(r"encoder\.layers\.(\d+)\.(.*)", rest)
        if block:
            index, inner = block.groups()
            if match := _QKV.fullmatch(inner):
                which, kind = match.groups()
                qkv.setdefault(f"{ours}.transformer.resblocks.{index}.attn.in_proj_{kind}", {})[which] = tensor
                continue
            new = _rename(inner, _HF_BLOCK_RULES)
            new = new and f"transformer.resblocks.{index}.{new}"
        else:
            new = _rename(rest, rules)
        if new is None:
            unused.append(key)
        else:
            out[f"{ours}.{new}"] = tensor
    out.update(_pack_qkv(qkv, prefix))
    return out


def hf_clip_to_ours(state: Mapping[str, torch.Tensor], prefix: str = "") -> tuple[StateDict, list[str]]:
    """transformers `CLIPModel` keys (optionally under `prefix`, e.g. 'clip.') -> ours; returns the unused keys."""
    unused: list[str] = []
    out = _convert_hf_tower(state, f"{prefix}vision_model.", "visual", _HF_VISION_RULES, unused)
    out |= _convert_hf_tower(state, f"{prefix}text_model.", "text", _HF_TEXT_RULES, unused)
    projections = {f"{prefix}visual_projection.weight": "visual.proj", f"{prefix}text_projection.weight": "text.text_projection"}
    for name, ours in projections.items():
        if name in state:
            out[ours] = state[name].T.contiguous()  # Linear weight (out, in) -> OpenAI's `x @ proj` matrix (in, out)
    towers = (f"{prefix}vision_model.", f"{prefix}text_model.")
    unused += [k for k in state if k.startswith(prefix) and not k.startswith(towers) and k not in projections]
    return out, [k for k in unused if not _HF_IGNORED.fullmatch(k)]


def hf_clipseg_to_ours(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """transformers `CLIPSegForImageSegmentation` keys -> ours; returns the unused keys."""
    clip_state = {k: v for k, v in state.items() if k.startswith("clip.")}
    out, unused = hf_clip_to_ours(clip_state, "clip.")
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key.startswith("clip.") or _HF_IGNORED.fullmatch(key):
            continue
        if not key.startswith("decoder."):
            unused.append(key)
            continue
        rest = key[len("decoder."):]
        if (match := re.fullmatch(r"layers\.(\d+)\.(.*)", rest)) and (qkv_match := _QKV.fullmatch(match[2])):
            index, (which, kind) = match[1], qkv_match.groups()
            qkv.setdefault(f"decoder.blocks.{index}.self_attn.in_proj_{kind}", {})[which] = tensor
        elif (new := _rename(rest, _HF_DECODER_RULES)) is not None:
            out[f"decoder.{new}"] = tensor
        else:
            unused.append(key)
    out.update(_pack_qkv(qkv, "decoder"))
    return out, unused


def openai_clip_to_ours(state: Mapping[str, torch.Tensor], prefix: str = "") -> tuple[StateDict, list[str]]:
    """OpenAI CLIP state dict (optionally under `prefix`) -> ours; returns the unused keys."""
    out: StateDict = {}
    unused = []
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest.startswith("visual."):
            out[rest] = tensor
        elif rest.startswith(_OPENAI_TEXT_KEYS):
            out[f"text.{rest}"] = tensor
        elif rest not in OPENAI_IGNORED:
            unused.append(key)
    return out, unused


ORIGINAL_UNUSED = frozenset({"reduce.weight", "reduce.bias"})  # built by the original code, never run by forward


def original_to_ours(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """The original repository's `CLIPDensePredT` state dict (decoder keys at top level, CLIP under
    `clip_model.` if it was saved too) -> ours; returns the unused keys."""
    out, unused = openai_clip_to_ours(state, "clip_model.")
    for key, tensor in state.items():
        if key.startswith("clip_model.") or key in ORIGINAL_UNUSED:
            continue
        if key.startswith(("film_mul.", "film_add.", "reduces.", "blocks.", "trans_conv.")):
            out[f"decoder.{key}"] = tensor
        else:
            unused.append(key)
    return out, unused


# ---- configs ------------------------------------------------------------------------------------------------


# Our config fields -> transformers' config.json keys (within `vision_config` / `text_config`) and defaults.
_HF_VISION_FIELDS = {
    "width": ("hidden_size", 768),
    "layers": ("num_hidden_layers", 12),
    "heads": ("num_attention_heads", 12),
    "mlp_width": ("intermediate_size", 3072),
    "patch_size": ("patch_size", 32),
    "image_size": ("image_size", 224),
    "activation": ("hidden_act", "quick_gelu"),
    "layer_norm_eps": ("layer_norm_eps", 1e-5),
}
_HF_TEXT_FIELDS = {
    "vocab_size": ("vocab_size", 49408),
    "context_length": ("max_position_embeddings", 77),
    "width": ("hidden_size", 512),
    "layers": ("num_hidden_layers", 12),
    "heads": ("num_attention_heads", 8),
    "mlp_width": ("intermediate_size", 2048),
    "activation": ("hidden_act", "quick_gelu"),
    "layer_norm_eps": ("layer_norm_eps", 1e-5),
}
_HF_DECODER_FIELDS = {
    "reduce_dim": ("reduce_dim", 64),
    "heads": ("decoder_num_attention_heads", 4),
    "mlp_width": ("decoder_intermediate_size", 2048),
    "extract_layers": ("extract_layers", (3, 6, 9)),
    "cond_layer": ("conditional_layer", 0),
}


def _section(config: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    # Configs written by transformers before v4.26 may keep the towers under `*_config_dict`.
    key = name if config.get(name) is not None else f"{name}_dict"
    section = config.get(key) or {}
    if not isinstance(section, Mapping):
        raise ConversionError(f"{source}: {key} is a {type(section).__name__}, expected an object of settings")
    return section


def _hf_values(section: Mapping[str, Any], fields: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    values = {ours: section.get(key, default) for ours, (key, default) in fields.items()}
    if isinstance(values.get("extract_layers"), list):
        values["extract_layers"] = tuple(values["extract_layers"])
    return values


def _renamed(error: ConfigError, names: Mapping[str, str], source: str) -> ConversionError:
    """A config problem reported under the key of the file it came from."""
    return ConversionError(f"{source}: {error.renamed(names.get(error.key, error.key))}")


def _hf_names(vision_key: str = "vision_config", text_key: str = "text_config") -> dict[str, str]:
    names = {f"vision.{ours}": f"{vision_key}.{key}" for ours, (key, _) in _HF_VISION_FIELDS.items()}
    names |= {f"text.{ours}": f"{text_key}.{key}" for ours, (key, _) in _HF_TEXT_FIELDS.items()}
    names |= {f"decoder.{ours}": key for ours, (key, _) in _HF_DECODER_FIELDS.items()}
    names |= {"vision.output_dim": "projection_dim", "text.output_dim": "projection_dim"}
    names |= {"decoder.head": "use_complex_transposed_convolution", "image_size": "size"}
    return names


def hf_towers_to_ours(config: Mapping[str, Any], source: str) -> tuple[VisionConfig, TextConfig]:
    """The vision/text parts of a transformers CLIP or CLIPSeg config.json (`source` names the file)."""
    if not isinstance(config, Mapping):
        raise ConversionError(f"{source}: holds a {type(config).__name__}, expected a JSON object of settings")
    vision = _hf_values(_section(config, "vision_config", source), _HF_VISION_FIELDS)
    text = _hf_values(_section(config, "text_config", source), _HF_TEXT_FIELDS)
    projection = config.get("projection_dim", 512)
    try:
        return (
            _built(VisionConfig, {**vision, "output_dim": projection}, "vision"),
            _built(TextConfig, {**text, "output_dim": projection}, "text"),
        )
    except ConfigError as error:
        raise _renamed(error, _hf_names(), source) from None


def _built(kind: type, values: Mapping[str, Any], section: str) -> Any:
    try:
        return kind(**values)
    except ConfigError as error:
        raise error.within(section) from None


def hf_clipseg_config_to_ours(
    config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None, source: str, preprocessor_source: str = ""
) -> CLIPSegConfig:
    """A transformers CLIPSeg config.json (+ preprocessor_config.json) -> our config. `source` and
    `preprocessor_source` name the two files in error messages."""
    vision, text = hf_towers_to_ours(config, source)
    values = _hf_values(config, _HF_DECODER_FIELDS)
    complex_head = config.get("use_complex_transposed_convolution", False)
    if not isinstance(complex_head, bool):
        raise ConversionError(f"{source}: use_complex_transposed_convolution = {complex_head!r}: expected true or false")
    values["head"] = "refined" if complex_head else "simple"
    extra: dict[str, Any] = {}
    if preprocessor is not None and not isinstance(preprocessor, Mapping):
        raise ConversionError(f"{preprocessor_source}: holds a {type(preprocessor).__name__}, expected a JSON object")
    if preprocessor:
        size = preprocessor.get("size")
        if isinstance(size, Mapping):
            size = size.get("height", size.get("shortest_edge"))
        if size is not None:
            extra["image_size"] = size
        for field in ("image_mean", "image_std"):
            if field in preprocessor:
                value = preprocessor[field]
                extra[field] = tuple(value) if isinstance(value, list) else value
    try:
        return CLIPSegConfig(vision=vision, text=text, decoder=_built(DecoderConfig, values, "decoder"), **extra)
    except ConfigError as error:
        if error.key in extra:
            raise _renamed(error, _hf_names(), preprocessor_source or source) from None
        raise _renamed(error, _hf_names(), source) from None


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def openai_towers_from_shapes(state: Mapping[str, torch.Tensor], source: str) -> tuple[VisionConfig, TextConfig]:
    """Infer an OpenAI CLIP ViT's architecture from its state dict (our key layout), as OpenAI's build does."""
    try:
        conv = state["visual.conv1.weight"]
        positions = state["visual.positional_embedding"].shape[0]
        grid = round((positions - 1) ** 0.5)
        vision_width = conv.shape[0]
        text_width = state["text.ln_final.weight"].shape[0]
        vision = VisionConfig(
            width=vision_width,
            layers=_count(state, r"visual\.transformer\.resblocks\.(\d+)\."),
            heads=vision_width // 64,
            mlp_width=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            patch_size=conv.shape[-1],
            image_size=grid * conv.shape[-1],
            output_dim=state["visual.proj"].shape[1],
        )
        text = TextConfig(
            vocab_size=state["text.token_embedding.weight"].shape[0],
            context_length=state["text.positional_embedding"].shape[0],
            width=text_width,
            layers=_count(state, r"text\.transformer\.resblocks\.(\d+)\."),
            heads=text_width // 64,
            mlp_width=state["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            output_dim=state["text.text_projection"].shape[1],
        )
    except KeyError as missing:
        raise ConversionError(f"{source}: not an OpenAI CLIP ViT checkpoint (no {missing.args[0]})") from None
    except (ConfigError, IndexError) as error:
        raise ConversionError(f"{source}: the tensor shapes do not describe a CLIP ViT ({error})") from None
    if grid * grid + 1 != positions:
        raise ConversionError(f"{source}: {positions} position embeddings do not form a square grid plus CLS")
    return vision, text


def original_decoder_from_shapes(state: Mapping[str, torch.Tensor], extract_layers: tuple[int, ...], source: str) -> DecoderConfig:
    """Infer the released decoder variant (rd16 / rd64 / rd64-refined, ...) from its tensors' shapes."""
    try:
        reduce_dim = state["decoder.film_mul.weight"].shape[0]
        depth = _count(state, r"decoder\.reduces\.(\d+)\.")
        mlp_width = state["decoder.blocks.0.linear1.weight"].shape[0]
    except KeyError as missing:
        raise ConversionError(f"{source}: not a CLIPSeg decoder checkpoint (no {missing.args[0]})") from None
    if depth != len(extract_layers):
        raise ConversionError(
            f"{source}: the decoder has {depth} reduce layers but extract_layers={extract_layers} names {len(extract_layers)}"
        )
    head = "refined" if "decoder.trans_conv.0.weight" in state else "simple"
    try:
        return DecoderConfig(reduce_dim=reduce_dim, mlp_width=mlp_width, extract_layers=extract_layers, head=head)
    except ConfigError as error:
        raise ConversionError(f"{source}: the tensor shapes do not describe a CLIPSeg decoder ({error})") from None
