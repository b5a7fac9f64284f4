"""CPU inference kernels through oneDNN: linear layers and attention (figures: benchmarks/README.md).

torch's fp32 `F.linear` calls MKL's sgemm, which takes its AVX2 code path on AMD CPUs and leaves AVX-512
unused; oneDNN (bundled with every x86 build of torch) picks its kernels by instruction set. `linear` and
`Linear` take oneDNN for fp32 CPU inference, and for weights pre-packed in oneDNN's layout
(`clipseg.precision.pack_weights`); everything else takes `F.linear`: autograd, other devices and dtypes, graph
capture (ONNX, torch.compile), torch without oneDNN, `torch.backends.mkldnn.flags(enabled=False)`.

`attention` does the same for the backbone's attention, where torch's fused CPU kernel runs its fp32 products
through the BLAS and has no fast bf16 path: per-head oneDNN products in fp32, batched products in bf16 (which
torch sends to oneDNN itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torch's own op behind Inductor's CPU linears: (input, weight, bias, post-op, post-op scalars, algorithm).
_onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def available() -> bool:
    """Whether this torch build has oneDNN's linear kernel (every x86 build has)."""
    return _onednn_linear is not None


def _cpu_inference(*tensors: torch.Tensor) -> bool:
    """oneDNN is there and on, the tensors are on the CPU, no gradient is wanted, no graph is being captured."""
    return (
        _onednn_linear is not None
        and torch.backends.mkldnn.enabled
        and all(t.device.type == "cpu" for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not _tracing()
    )


def _takes_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.dtype == weight.dtype == torch.float32
        and weight.is_contiguous()  # oneDNN falls back to a reference kernel (1000x slower) on strided weights
        and x.dim() >= 2
        and x.numel() > 0
        and _cpu_inference(x, weight)
    )


def _tracing() -> bool:
    # Graph capture (ONNX export, TorchScript, torch.compile/export) must see the portable op.
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN for fp32 CPU inference (same result up to fp32 rounding) and
    for weights packed by `clipseg.precision.pack_weights`."""
    if weight.is_mkldnn and (x.device.type != "cpu" or x.dtype != weight.dtype):
        raise ValueError(
            f"weights packed for CPU inference take {weight.dtype} CPU inputs, got {x.dtype} on {x.device}"
        )
    if weight.is_mkldnn or _takes_onednn(x, weight):
        return _onednn_linear(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, dropout: float) -> torch.Tensor:
    """softmax(q kᵀ / √d) v of (B, heads, N, d) tensors: `F.scaled_dot_product_attention`, or for CPU inference
    of the wide heads of the backbone, oneDNN products (same result up to rounding)."""
    batch, heads, tokens, dim = q.shape
    if (
        causal
        or dropout
        or dim < 32  # the decoder's 16-wide heads: the fused kernel is as fast
        or tokens < 64
        or q.dtype not in (torch.float32, torch.bfloat16)
        or not _cpu_inference(q, k, v)
    ):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout)
    # Per-head rows must be dense for oneDNN's fast kernels (q, k, v arrive as views of one packed projection).
    q, k, v = q.contiguous() * dim**-0.5, k.contiguous(), v.contiguous()
    if q.dtype == torch.bfloat16:  # batched products: torch sends bf16 matmuls to oneDNN itself
        return (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    out = q.new_empty(batch, heads, tokens, dim)
    for b in range(batch):
        for h in range(heads):
            probabilities = _onednn_linear(q[b, h], k[b, h], None, "none", [], "").softmax(dim=-1)
            out[b, h] = _onednn_linear(probabilities, v[b, h].t(), None, "none", [], "")
    return out


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) whose forward is `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
