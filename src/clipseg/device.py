"""Device names -> torch devices, checked against what this machine has."""

from __future__ import annotations

import torch


def resolve_device(name: str | None = "auto", *, local_rank: int = 0) -> torch.device:
    """`name` as a device this machine has; "auto" or None picks CUDA, then MPS, then the CPU. An unnumbered CUDA
    device is the process's `local_rank` one, as in a distributed run. Raises ValueError naming the problem."""
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r} is not a device name (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name!r}: CUDA is not available on this machine (use cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name!r}: MPS is not available on this machine (use cpu)")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device
