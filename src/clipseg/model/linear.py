"""Linear layers that run fp32 inference on the CPU through oneDNN instead of the BLAS behind `F.linear`.

torch's fp32 `F.linear` calls MKL's sgemm, which takes its AVX2 code path on AMD CPUs and leaves AVX-512
unused; oneDNN (bundled with every x86 build of torch) picks its kernels by instruction set. Measured on an AMD
EPYC Zen 5 (2 cores): 370 GFLOP/s against MKL's 200 on the backbone's shapes, full fp32 accuracy. Everything
else takes `F.linear`: autograd, other devices and dtypes, graph capture (ONNX, torch.compile), torch without
oneDNN, and `torch.backends.mkldnn.flags(enabled=False)`.
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
    """`F.linear(x, weight, bias)`, through oneDNN for fp32 CPU inference (same result up to fp32 rounding)."""
    if _takes_onednn(x, weight):
        return _onednn_linear(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) whose forward is `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
