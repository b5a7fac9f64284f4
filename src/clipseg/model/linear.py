"""Linear layers that run fp32 inference on the CPU through oneDNN instead of the BLAS behind `F.linear`.

torch's fp32 `F.linear` calls MKL's sgemm, which takes its AVX2 code path on AMD CPUs and leaves AVX-512
unused; oneDNN (bundled with every x86 build of torch) picks its kernels by instruction set. Measured on an AMD
EPYC Zen 5 (2 cores): 370 GFLOP/s against MKL's 200 on the backbone's shapes, full fp32 accuracy. Everything
else takes `F.linear`: autograd, other devices and dtypes, graph capture (ONNX, torch.compile), torch without
oneDNN, and `torch.backends.mkldnn.flags(enabled=False)`.

`pack_weights(model)` goes one step further for CPU inference: each weight is stored once, in oneDNN's blocked
layout, so that no call re-lays it out (another ~10% on the backbone; the state dict still reads back dense).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torch's own op behind Inductor's CPU linears: (input, weight, bias, post-op, post-op scalars, algorithm).
_onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _takes_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _onednn_linear is not None
        and torch.backends.mkldnn.enabled
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() > 0
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not _tracing()
    )


def _tracing() -> bool:
    # Graph capture (ONNX export, TorchScript, torch.compile/export) must see the portable op.
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN for fp32 CPU inference (same result up to fp32 rounding) and
    for weights packed by `pack_weights`."""
    if weight.is_mkldnn:
        if x.device.type != "cpu" or x.dtype != weight.dtype:
            raise ValueError(
                f"weights packed for CPU inference take {weight.dtype} CPU inputs, got {x.dtype} on {x.device}"
            )
        return _onednn_linear(x, weight, bias, "none", [], "")
    if _takes_onednn(x, weight):
        return _onednn_linear(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def pack_weights(model: nn.Module, rows: int = 512) -> nn.Module:
    """Store every linear weight of `model` (our `Linear`s and the attention blocks' q/k/v projections) in
    oneDNN's pre-packed layout, in place, for CPU inference in float32 or bfloat16. Returns `model`.

    The model is then for inference on the CPU only: no gradients, no `.to()` another device or dtype (load it
    again for that). `state_dict()` and `save_pretrained` still give the ordinary dense weights. `rows` is a
    hint of the typical number of input rows (tokens); oneDNN's layouts are fast across a wide range of it.
    A model with nothing to pack (no oneDNN, another device or dtype) is returned unchanged."""
    from .transformer import Attention  # transformer.py builds on this module

    for module in model.modules():
        if isinstance(module, Linear):
            module.weight = _packed(module.weight, rows)
        elif isinstance(module, Attention):
            module.in_proj_weight = _packed(module.in_proj_weight, rows)
    return model


def _packed(weight: nn.Parameter, rows: int) -> nn.Parameter:
    packable = (
        _onednn_linear is not None
        and not weight.is_mkldnn
        and weight.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.bfloat16)
    )
    if not packable:
        return weight
    return nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows), requires_grad=False)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) whose forward is `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
