"""Reduced-precision inference: bfloat16/float16 weights and activations, or int8 dynamically quantised linears.

    model = clipseg.load_model(source)
    model = apply_precision(model, "int8")        # or "bf16" (CPUs with AVX-512 BF16/AMX, GPUs), "fp16" (GPUs)

bf16/fp16 convert every parameter (`model.to(dtype)`, the same as `load_model(..., dtype=...)`); activations
follow the weights and the predictor hands back float32 logits. On the CPU, fp32 and bf16 linear weights are also
pre-packed in oneDNN's layout (`pack_weights`, so that no call re-lays them out): the model is then for CPU
inference only (its state dict and `save_pretrained` stay as before). A model converted to the precision has all
its linears packed; one already at it (e.g. fp32 as loaded) only the hot path, the backbone blocks the decoder
reads and the decoder, because packed copies of weights loaded from a memory-mapped file cost memory and the
text tower, on a few tokens, gains little.

int8 replaces the CLIP towers' linear layers, including each attention block's packed q/k/v projection, by
torch.ao's dynamically quantised Linear: int8 weights (per output channel), activations quantised on the fly,
float32 in and out. It runs on the CPU only
(fbgemm/oneDNN kernels) and is for inference only. The decoder stays float32: it is small, and its output is
what the masks are thresholded from.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .model import onednn
from .model.clipseg import CLIPSeg
from .model.transformer import Attention
from .number_formats import PRECISIONS, Precision

_FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def apply_precision(model: CLIPSeg, precision: Precision) -> CLIPSeg:
    """Convert `model` in place for inference at `precision` ("fp32", "bf16", "fp16" or "int8"); returns it, in
    eval mode. On the CPU every precision but fp16 leaves a model for CPU inference only."""
    if precision in _FLOAT_DTYPES:
        if precision != "fp32" and model.device.type == "cpu" and not _native_on_this_cpu(precision):
            warnings.warn(f"this CPU has no native {precision} arithmetic: {precision} runs slower than fp32 here")
        converted = model.dtype != _FLOAT_DTYPES[precision]
        model = model.to(_FLOAT_DTYPES[precision]).eval()
        if model.device.type == "cpu":
            # Weights converted just now are fresh tensors: packing them all costs no memory. Weights kept as
            # loaded may be views of a memory-mapped checkpoint: only the hot path is worth a packed copy.
            for module in [model] if converted else _hot_path(model):
                pack_weights(module)
        return model
    if precision == "int8":
        return quantize_dynamic(model)
    raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def pack_weights(model: nn.Module, rows: int = 512) -> nn.Module:
    """Store every linear weight of `model` (our `Linear`s and the attention blocks' q/k/v projections) in
    oneDNN's pre-packed layout, in place, for CPU inference in float32 or bfloat16. Returns `model`.

    The module is then for inference on the CPU only: no gradients, no `.to()` another device or dtype (load it
    again for that). `state_dict()` and `save_pretrained` still give the ordinary dense weights. `rows` is a
    hint of the typical number of input rows (tokens); oneDNN's layouts are fast across a wide range of it.
    Weights that cannot be packed (no oneDNN, another device or dtype) are left as they are.

    Memory: a packed weight is a new tensor. Weights loaded from a safetensors file are views of its memory
    map, which stays resident while the model lives, so each packed weight adds its size to the process."""
    for module in model.modules():
        linear = isinstance(module, onednn.Linear)
        name = "weight" if linear else "in_proj_weight" if isinstance(module, Attention) else None
        if name is not None and _packable(getattr(module, name)):
            packed = torch.ops.mkldnn._reorder_linear_weight(getattr(module, name).detach(), rows)
            setattr(module, name, nn.Parameter(packed, requires_grad=False))
            module.register_state_dict_post_hook(_dense_state)
    return model


def _packable(weight: torch.Tensor) -> bool:
    return (
        onednn.available()
        and not weight.is_mkldnn
        and weight.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.bfloat16)
    )


def _dense_state(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    # state_dict() of a packed model reads as an ordinary one (save_pretrained, ONNX export, other libraries).
    for key, value in state.items():
        if key.startswith(prefix) and value.is_mkldnn:
            state[key] = value.to_dense()


def _native_on_this_cpu(precision: str) -> bool:
    """AVX-512 BF16 / AMX (bf16) or AVX-512 FP16 / AMX-FP16 (fp16), as oneDNN sees it."""
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    probe = getattr(torch.ops.mkldnn, check, None) if torch.backends.mkldnn.is_available() else None
    return bool(probe()) if probe is not None else False


def _hot_path(model: CLIPSeg) -> list[nn.Module]:
    """The backbone blocks up to the deepest extract layer (the hot path) and the decoder."""
    deepest = max(model.config.decoder.extract_layers)
    return [*model.visual.transformer.resblocks[: deepest + 1], model.decoder]


def quantize_dynamic(model: CLIPSeg) -> CLIPSeg:
    """Quantise the CLIP towers' linear layers to int8 with dynamic activation quantisation, in place.

    The model must be a float32 model on the CPU. Returns `model`, in eval mode."""
    if model.device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU only; the model is on {model.device}")
    if model.dtype != torch.float32:
        raise ValueError(f"int8 dynamic quantisation needs a float32 model, got {model.dtype}")
    model.eval()
    with warnings.catch_warnings():
        # torch.ao's eager quantisation is deprecated in favour of torchao, whose int8 CPU path needs
        # torch.compile; the eager kernels are still the fastest int8 linears a CPU can run without it.
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*deprecated")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        def quantized(weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Module:
            # `from_float` takes exactly an nn.Linear carrying a qconfig; ours are a subclass, and the
            # attention's packed q/k/v projection is two bare parameters.
            plain = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
            plain.weight, plain.bias = weight, bias
            plain.qconfig = per_channel_dynamic_qconfig
            return DynamicInt8Linear.from_float(plain)

        for tower in (model.visual, model.text):
            for module in list(tower.modules()):
                if isinstance(module, Attention):
                    module.in_proj = quantized(module.in_proj_weight, module.in_proj_bias)
                for name, child in module.named_children():
                    if isinstance(child, nn.Linear):
                        setattr(module, name, quantized(child.weight, child.bias))
    return model
