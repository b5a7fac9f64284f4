"""Mixed precision of training and validation: the autocast dtype of `optim.precision` and its context."""

from __future__ import annotations

import contextlib

import torch


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting (None: plain fp32)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("optim.precision fp16 needs a GPU; use bf16 (or fp32) on the CPU")
        return torch.float16
    raise ValueError(f"optim.precision: unknown precision {precision!r} (auto, fp32, fp16, bf16)")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for `dtype`, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
