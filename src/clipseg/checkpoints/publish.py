"""Writers for the ecosystem's layouts: transformers' CLIPSeg directory and the original repository's decoder file.

The inverse of `clipseg.checkpoints.convert`: our keys (OpenAI CLIP + original decoder names) become transformers'
(`clip.vision_model.*`, q/k/v projections split, projection matrices transposed into Linear weights) or the original
`CLIPDensePredT` decoder keys. A model these layouts cannot express (a baseline, another backbone, a decoder the
original code cannot build) is refused before anything is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_path, write_text
from ..model.clipseg import LAYOUT_WRITERS, CLIPSeg
from ..model.config import CLIPSegConfig, DecoderConfig, TextConfig, VisionConfig
from .convert import ConversionError, StateDict
from .io import write_safetensors

LAYOUTS = ("clipseg", "transformers", "original")
# CLIP's initial temperature 1 / 0.07, which transformers' CLIPModel stores; CLIPSeg never uses it.
_LOGIT_SCALE = math.log(1 / 0.07)

_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_DECODER_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "self_attn.out_proj": "self_attn.out_proj",
                  "linear1": "mlp.fc1", "linear2": "mlp.fc2"}
_VISION = {"class_embedding": "embeddings.class_embedding", "conv1.weight": "embeddings.patch_embedding.weight",
           "positional_embedding": "embeddings.position_embedding.weight"}
_TEXT = {"token_embedding.weight": "embeddings.token_embedding.weight",
         "positional_embedding": "embeddings.position_embedding.weight"}
_NORMS = {"visual.ln_pre": "clip.vision_model.pre_layrnorm", "visual.ln_post": "clip.vision_model.post_layernorm",
          "text.ln_final": "clip.text_model.final_layer_norm"}


def _split_qkv(tensor: torch.Tensor, prefix: str, kind: str) -> StateDict:
    q, k, v = tensor.chunk(3)
    return {f"{prefix}.q_proj.{kind}": q, f"{prefix}.k_proj.{kind}": k, f"{prefix}.v_proj.{kind}": v}


def _block(rest: str, tensor: torch.Tensor, layers: str, attention: str, names: Mapping[str, str]) -> StateDict:
    """One transformer-block parameter ('<index>.<name>.<kind>') -> its transformers key(s): the packed q/k/v
    projection is split in three, everything else renamed by `names`."""
    index, inner = rest.split(".", 1)
    prefix = f"{layers}.{index}"
    if inner.startswith(f"{attention}in_proj_"):
        return _split_qkv(tensor, f"{prefix}.self_attn", inner[len(f"{attention}in_proj_"):])
    name, kind = inner.rsplit(".", 1)
    return {f"{prefix}.{names[name]}.{kind}": tensor}


def ours_to_hf_clipseg(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Our CLIPSeg state dict -> transformers `CLIPSegForImageSegmentation` keys (exact tensors, no rounding)."""
    out: StateDict = {"clip.logit_scale": torch.tensor(_LOGIT_SCALE)}
    for key, tensor in state.items():
        tower, _, rest = key.partition(".")
        if key in ("visual.proj", "text.text_projection"):
            name = "visual_projection" if tower == "visual" else "text_projection"
            out[f"clip.{name}.weight"] = tensor.T.contiguous()  # OpenAI's `x @ proj` -> Linear (out, in)
        elif (norm := key.rsplit(".", 1)[0]) in _NORMS:
            out[f"{_NORMS[norm]}.{key.rsplit('.', 1)[1]}"] = tensor
        elif tower in ("visual", "text") and rest.startswith("transformer.resblocks."):
            model = "vision_model" if tower == "visual" else "text_model"
            out |= _block(rest[len("transformer.resblocks."):], tensor, f"clip.{model}.encoder.layers", "attn.", _BLOCK)
        elif tower == "visual" and rest in _VISION:
            out[f"clip.vision_model.{_VISION[rest]}"] = tensor
        elif tower == "text" and rest in _TEXT:
            out[f"clip.text_model.{_TEXT[rest]}"] = tensor
        elif tower == "decoder" and rest.startswith("blocks."):
            out |= _block(rest[len("blocks."):], tensor, "decoder.layers", "self_attn.", _DECODER_BLOCK)
        elif tower == "decoder" and rest.startswith("trans_conv"):
            out[f"decoder.transposed_convolution{rest[len('trans_conv'):]}"] = tensor
        elif tower == "decoder" and rest.startswith(("film_mul.", "film_add.", "reduces.")):
            out[key] = tensor
        else:
            raise ConversionError(f"{key}: no counterpart in transformers' CLIPSeg layout")
    return out


def ours_to_original(state: Mapping[str, torch.Tensor]) -> StateDict:
    """The decoder of our state dict -> the original repository's rd64-uni(-refined).pth keys (CLIP is not included:
    the original code loads it from OpenAI's ViT-B-16.pt)."""
    return {key[len("decoder."):]: tensor for key, tensor in state.items() if key.startswith("decoder.")}


def hf_clipseg_config(config: CLIPSegConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our config -> transformers' (config.json, preprocessor_config.json)."""
    vision, text, decoder = config.vision, config.text, config.decoder
    if vision.output_dim != text.output_dim:
        raise ConversionError(
            f"transformers' CLIPSeg has one projection_dim; this model projects to {vision.output_dim} (image) and "
            f"{text.output_dim} (text)"
        )
    model_json = {
        "architectures": ["CLIPSegForImageSegmentation"],
        "model_type": "clipseg",
        "projection_dim": vision.output_dim,
        "logit_scale_init_value": _LOGIT_SCALE,
        "extract_layers": list(decoder.extract_layers),
        "reduce_dim": decoder.reduce_dim,
        "decoder_num_attention_heads": decoder.heads,
        "decoder_intermediate_size": decoder.mlp_width,
        "conditional_layer": decoder.cond_layer,
        "use_complex_transposed_convolution": decoder.head == "refined",
        "vision_config": {
            "hidden_size": vision.width, "num_hidden_layers": vision.layers, "num_attention_heads": vision.heads,
            "intermediate_size": vision.mlp_width, "patch_size": vision.patch_size, "image_size": vision.image_size,
            "hidden_act": vision.activation, "layer_norm_eps": vision.layer_norm_eps, "projection_dim": vision.output_dim,
        },
        "text_config": {
            "vocab_size": text.vocab_size, "max_position_embeddings": text.context_length, "hidden_size": text.width,
            "num_hidden_layers": text.layers, "num_attention_heads": text.heads, "intermediate_size": text.mlp_width,
            "hidden_act": text.activation, "layer_norm_eps": text.layer_norm_eps, "projection_dim": text.output_dim,
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
        },
    }
    preprocessor_json = {
        "image_processor_type": "ViTImageProcessor",
        "processor_class": "CLIPSegProcessor",
        "do_resize": True,
        "size": {"height": config.image_size, "width": config.image_size},
        "resample": 2,  # PIL bilinear
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
    }
    return model_json, preprocessor_json


def _check_expressible(model: CLIPSeg, layout: str) -> None:
    if type(model) is not CLIPSeg:
        raise ConversionError(f"a {type(model).__name__} model cannot be written in the {layout} layout (CLIPSeg only)")
    vision, text, decoder = model.config.vision, model.config.text, model.config.decoder
    if not vision.pre_norm or vision.patch_bias or decoder.layer_norm_eps != vision.layer_norm_eps:
        raise ConversionError(f"this model's backbone is not a CLIP ViT that the {layout} layout can express")
    if layout == "original":
        clip_b16 = VisionConfig(), TextConfig()
        released = DecoderConfig(reduce_dim=decoder.reduce_dim, extract_layers=decoder.extract_layers, head=decoder.head)
        if (vision, text) != clip_b16:
            raise ConversionError("the original code runs OpenAI's CLIP ViT-B/16 only; this model has another backbone")
        if decoder != released:
            raise ConversionError(
                "the original CLIPDensePredT builds 4 decoder heads, feed-forward width 2048 and FiLM at the first "
                f"layer; this decoder has {decoder.heads} heads, width {decoder.mlp_width}, FiLM at {decoder.cond_layer}"
            )


def _dense_state(model: CLIPSeg) -> StateDict:
    state = model.state_dict()
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConversionError("this model holds int8-quantised layers, which are for inference: save the float model")
    return {key: value.detach().cpu().contiguous() for key, value in state.items()}


def save_model(model: CLIPSeg, directory: str | Path, layout: str = "clipseg") -> Path:
    """Write `model` to `directory` in one of `LAYOUTS`. Every file is written to a temporary name and renamed, and
    the config goes last, so a directory with a config is complete; other files in `directory` are left alone.

    - "clipseg": our format (`CLIPSeg.save_pretrained`);
    - "transformers": config.json, model.safetensors, tokenizer and preprocessor files that
      `transformers.CLIPSegForImageSegmentation.from_pretrained` (and transformers.js) load;
    - "original": the original repository's decoder file (``rd64-uni.pth`` / ``rd64-uni-refined.pth`` naming,
      decoder keys only) plus ``clipseg_args.json`` with the `CLIPDensePredT` arguments to build it with.
    """
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    directory = Path(directory)
    if layout == "clipseg":
        return model.save_pretrained(directory)
    _check_expressible(model, layout)
    state = _dense_state(model)
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "transformers":
        model_json, preprocessor_json = hf_clipseg_config(model.config)
        model.tokenizer.save_pretrained(directory)
        write_safetensors(ours_to_hf_clipseg(state), directory / "model.safetensors")
        write_text(directory / "preprocessor_config.json", json.dumps(preprocessor_json, indent=2))
        write_text(directory / "config.json", json.dumps(model_json, indent=2))
        return directory
    decoder = model.config.decoder
    name = f"rd{decoder.reduce_dim}-uni{'-refined' if decoder.head == 'refined' else ''}.pth"
    with atomic_path(directory / name) as temporary:
        torch.save(ours_to_original(state), temporary)
    arguments = {
        "weights": name,
        "class": "models.clipseg.CLIPDensePredT",
        "version": "ViT-B/16",
        "reduce_dim": decoder.reduce_dim,
        "extract_layers": list(decoder.extract_layers),
        "complex_trans_conv": decoder.head == "refined",
        "load": "model.load_state_dict(torch.load(weights), strict=False)",
    }
    write_text(directory / "clipseg_args.json", json.dumps(arguments, indent=2))
    return directory


LAYOUT_WRITERS.update({layout: lambda model, directory, layout=layout: save_model(model, directory, layout)
                       for layout in LAYOUTS if layout != "clipseg"})
