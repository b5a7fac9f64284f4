"""The conditional vector of each sample of a training or validation batch (text, visual or mixed prompt)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..model.clipseg import CLIPSeg


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
