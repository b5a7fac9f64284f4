"""Random but well-conditioned models for tests and benchmarks (no pretrained weights can be downloaded there).

Fresh initialisations make a poor test: transformers draws the CLIPSeg decoder from N(0, 1), which saturates its
attention, and LayerNorms start at (1, 0), which hides swapped parameters. `perturb_` re-draws the decoder at a
sane scale and adds noise everywhere else so that logits vary across pixels and prompts. `he_init_` re-draws
every weight matrix He-scaled with zero biases, for tests that want large, clearly varying outputs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .model.clipseg import CLIPSeg
from .model.config import CLIPSegConfig, DecoderConfig, TextConfig, VisionConfig



def tiny_config(head: Literal["simple", "refined"] = "simple", *, image_size: int = 64) -> CLIPSegConfig:
    """CLIPSeg's architecture small enough for CPU tests: 16-pixel patches, four vision blocks, OpenAI's vocabulary.
    Head width 64 as in every OpenAI CLIP, whose state dicts do not record the number of heads."""
    return CLIPSegConfig(
        vision=VisionConfig(
            width=128, layers=4, heads=2, mlp_width=256, patch_size=16, image_size=image_size, output_dim=32
        ),
        text=TextConfig(width=64, layers=2, heads=1, mlp_width=128, output_dim=32),
        decoder=DecoderConfig(reduce_dim=16, heads=4, mlp_width=64, extract_layers=(1, 2, 3), head=head),
    )

_TRANSPOSED_CONVOLUTIONS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@torch.no_grad()
def perturb_(module: nn.Module, *, seed: int, decoder_prefixes: tuple[str, ...] = ("decoder.",)) -> nn.Module:
    """Make random weights non-degenerate in place (see the module docstring); returns `module`."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if name.startswith(decoder_prefixes):
            if param.ndim > 1:
                fan_in = param[0].numel()
                param.copy_(noise * (1.0 / fan_in) ** 0.5)
            else:
                param.add_(0.1 * noise)
        else:
            param.add_(0.02 * noise)
    return module


@torch.no_grad()
def he_init_(module: nn.Module, *, seed: int | torch.Generator) -> nn.Module:
    """Re-draw every weight of two or more dimensions from N(0, 2 / fan_in) and zero the biases, in place; other
    parameters (LayerNorm scales, ...) keep their values. `seed` may be a generator to draw from (it is advanced).
    Returns `module`."""
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    # Transposed convolutions store (in, out, k, k) weights: their fan-in is the input channels.
    transposed = {id(m.weight) for m in module.modules() if isinstance(m, _TRANSPOSED_CONVOLUTIONS)}
    for name, parameter in module.named_parameters():
        if parameter.ndim > 1:
            fan_in = parameter.shape[0] if id(parameter) in transposed else parameter[0].numel()
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * math.sqrt(2.0 / fan_in))
        elif name.endswith("bias"):
            parameter.zero_()
    return module


def random_model(config: CLIPSegConfig | None = None, *, seed: int = 0) -> CLIPSeg:
    """Our CLIPSeg (default: `tiny_config()`) with random, well-conditioned weights, in eval mode."""
    torch.manual_seed(seed)
    return perturb_(CLIPSeg(config or tiny_config()), seed=seed).eval()


def random_transformers_clipseg(config: CLIPSegConfig | None = None, *, seed: int = 0):
    """transformers' `CLIPSegForImageSegmentation` (the independent oracle) of the same architecture, with random
    well-conditioned weights. Needs the `transformers` package (a test dependency)."""
    from transformers import CLIPSegConfig as HFConfig
    from transformers import CLIPSegForImageSegmentation

    config = config or tiny_config()
    vision, text, decoder = config.vision, config.text, config.decoder
    hf_config = HFConfig(
        vision_config=dict(
            hidden_size=vision.width,
            num_hidden_layers=vision.layers,
            num_attention_heads=vision.heads,
            intermediate_size=vision.mlp_width,
            patch_size=vision.patch_size,
            image_size=vision.image_size,
            hidden_act=vision.activation,
        ),
        text_config=dict(
            vocab_size=text.vocab_size,
            max_position_embeddings=text.context_length,
            hidden_size=text.width,
            num_hidden_layers=text.layers,
            num_attention_heads=text.heads,
            intermediate_size=text.mlp_width,
            hidden_act=text.activation,
        ),
        projection_dim=vision.output_dim,
        extract_layers=list(decoder.extract_layers),
        reduce_dim=decoder.reduce_dim,
        decoder_num_attention_heads=decoder.heads,
        decoder_intermediate_size=decoder.mlp_width,
        conditional_layer=decoder.cond_layer,
        use_complex_transposed_convolution=decoder.head == "refined",
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(hf_config)
    return perturb_(model, seed=seed).eval()
