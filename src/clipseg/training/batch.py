"""What a training or validation batch needs besides the model: device, mixed precision, conditional vectors."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from ..model.clipseg import CLIPSeg


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """`name` as a device, or the best available one (CUDA, then MPS, then CPU); an unnumbered CUDA device is
    the process's `local_rank` one, as in a distributed run."""
    if name is not None:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"run.device: {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("run.device: CUDA was requested but is not available")
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def conditional_vectors(model: CLIPSeg, batch: Mapping[str, Any]) -> torch.Tensor:
    """c = w * text + (1 - w) * visual per sample of a collated batch (fp32, (B, 512)).

    The text tower encodes every ``batch["text"]``; the image tower runs only on the supports of samples with
    ``text_weight`` w < 1. CLIP is frozen and runs without autograd.
    """
    weights = torch.as_tensor(batch["text_weight"], dtype=torch.float32).to(model.device)
    with torch.no_grad():
        conditional = model.encode_text(model.tokenizer(list(batch["text"])).ids).float()
        mixed = weights < 1
        if bool(mixed.any()):
            visual = model.encode_image(batch["support"][mixed.cpu()].to(model.device)).float()
            weight = weights[mixed, None]
            conditional[mixed] = weight * conditional[mixed] + (1 - weight) * visual
    return conditional
