"""The model a run trains: a fresh decoder on (pre-trained or random) CLIP -- CLIPSeg or one of the paper's
baselines (CLIP-Deconv, ViTSeg) -- or a checkpoint to fine-tune."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoints.load import build, load_clip, load_model
from ..checkpoints.vitseg import build_vitseg
from ..model.baselines import CLIPDeconv
from ..model.clipseg import CLIPSeg
from ..model.config import PRESETS, CLIPSegConfig
from ..typed_config import merge
from .config import RANDOM_CLIP, ModelSettings

# The released decoders were trained reading CLIP blocks (3, 7, 9) (the paper; experiments/phrasecut.yaml), while
# the presets keep (3, 6, 9), the layers every front-end runs the hub checkpoints with at inference.
TRAINING_EXTRACT_LAYERS = (3, 7, 9)


def build_model(settings: ModelSettings, seed: int, image_size: int | None = None) -> CLIPSeg:
    """The model of `settings`, on the CPU, CLIP frozen. A fresh decoder is initialised from `seed` (without
    touching the global RNG), so every process of a run and every resumption builds the same model. `image_size`
    (the training resolution) is recorded in the model's config, so that the exported model is run at it."""
    if settings.init is not None:
        if settings.architecture:
            raise ValueError("model.architecture cannot be combined with model.init (the checkpoint fixes it)")
        model = load_model(settings.init)
    elif settings.kind == "vitseg":
        model = _fresh_vitseg(settings, seed)
    else:
        model = _fresh_model(settings, seed)
    if image_size is not None:
        model.config = dataclasses.replace(model.config, image_size=image_size)
    set_decoder_dropout(model, settings.dropout)
    return model


def architecture_config(settings: ModelSettings) -> CLIPSegConfig:
    """The architecture a fresh model of `settings` gets before CLIP's own sizes are filled in: the preset with
    the training extract layers (3, 7, 9), then `settings.architecture` on top."""
    if settings.preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {settings.preset!r} (one of {', '.join(PRESETS)})")
    preset = PRESETS[settings.preset].replace(extract_layers=TRAINING_EXTRACT_LAYERS)
    if settings.kind == "clip-deconv":  # the original CLIPDenseBaseline: block 9 only, D = 64
        preset = dataclasses.replace(preset, decoder=CLIPDeconv.default_config().decoder)
    return _with_architecture(preset, settings.architecture)


def _fresh_vitseg(settings: ModelSettings, seed: int) -> CLIPSeg:
    if {"vision", "text"} & set(settings.architecture):
        raise ValueError("model.architecture: ViTSeg's vision and text towers come from model.backbone and model.clip")
    if settings.backbone is None:
        raise ValueError("model.backbone: set ViTSeg's timm ViT checkpoint (vit_base_patch16_384 weights)")
    if settings.clip == RANDOM_CLIP:
        raise ValueError("model.clip: ViTSeg needs CLIP weights for its text tower (not random)")
    decoder = architecture_config(settings).decoder
    with torch.random.fork_rng(devices=[]):
        return build_vitseg(settings.backbone, settings.clip, decoder=decoder, seed=seed)


def _new_model(settings: ModelSettings, config: CLIPSegConfig, tokenizer: Any = None) -> CLIPSeg:
    if settings.kind == "clip-deconv":
        return CLIPDeconv(config, reduce2_dim=settings.reduce2_dim, tokenizer=tokenizer)
    return CLIPSeg(config, tokenizer)


def _fresh_model(settings: ModelSettings, seed: int) -> CLIPSeg:
    pretrained_clip = settings.clip != RANDOM_CLIP
    if pretrained_clip and {"vision", "text"} & set(settings.architecture):
        raise ValueError(
            "model.architecture: vision/text settings need model.clip: random (CLIP weights fix their architecture)"
        )
    config = architecture_config(settings)
    if not pretrained_clip:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _new_model(settings, config)
        return model.eval()
    clip_state, vision, text, tokenizer = load_clip(settings.clip)
    try:
        config = dataclasses.replace(config, vision=vision, text=text)
    except ValueError as error:
        raise ValueError(f"model.clip {settings.clip}: {error}") from None

    def fresh_decoder() -> CLIPSeg:
        torch.manual_seed(seed)
        return _new_model(settings, config, tokenizer)

    with torch.random.fork_rng(devices=[]):
        model = build(fresh_decoder, clip_state, f"model.clip {settings.clip}", may_be_missing=("decoder.",))
    return model.eval()


def _with_architecture(config: CLIPSegConfig, overrides: Mapping[str, Any]) -> CLIPSegConfig:
    merged = merge(config.to_dict(), overrides)
    try:
        return CLIPSegConfig.from_dict(merged)
    except TypeError as error:  # an unknown field of a sub-config
        raise ValueError(f"model.architecture: {error}") from None
    except ValueError as error:
        raise ValueError(f"model.architecture: {error}") from None


def set_decoder_dropout(model: CLIPSeg, probability: float) -> None:
    """Dropout of the decoder blocks (on the attention probabilities and the residual branches) while training."""
    for module in model.decoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = probability


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the optimiser updates (the decoder's), by state-dict name."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


def frozen_fingerprint(model: nn.Module) -> str:
    """A digest of every frozen tensor (names, shapes, dtypes, bytes): equal iff the frozen weights are equal."""
    trainable = trainable_parameters(model)
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        if name in trainable:
            continue
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
