"""Transformer building blocks shared by CLIP's towers and the CLIPSeg decoder.

Parameter names follow OpenAI CLIP (`ln_1`, `attn.in_proj_weight`, `mlp.c_fc`, ...) and torch's
`nn.TransformerEncoderLayer` (decoder), so the released checkpoints load with little or no renaming.
Tensors are batch-first: (batch, tokens, width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Activation
from .onednn import Linear, attention, linear


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return x * torch.sigmoid(1.702 * x)
        # Inference: one new tensor instead of three (the MLP's hidden layer is the backbone's largest).
        return torch.mul(x, 1.702).sigmoid_().mul_(x)


def make_activation(name: Activation) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}")


class Attention(nn.Module):
    """Multi-head self-attention with one packed q/k/v projection (nn.MultiheadAttention's parameter names)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout  # on the attention probabilities, while training
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = Linear(width, width)
        # Optional stand-in for the packed q/k/v projection, e.g. an int8 dynamically quantised Linear
        # (`clipseg.precision.quantize_dynamic`); the parameters above stay the checkpoint's.
        self.in_proj: nn.Module | None = None
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self, x: torch.Tensor, *, causal: bool = False, logit_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`logit_mask` (B, N or 1, N) multiplies the scaled attention logits before the softmax (the original
        CLIPSeg's CLIP-internal masking for visual prompts); otherwise the fused kernel runs."""
        batch, tokens, width = x.shape
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias) if self.in_proj is None else self.in_proj(x)
        q, k, v = qkv.view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if logit_mask is None:
            out = attention(q, k, v, causal=causal, dropout=self.dropout if self.training else 0.0)
        else:
            logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            out = (logits * logit_mask.unsqueeze(1)).softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: Activation) -> None:
        super().__init__()
        self.c_fc = Linear(width, hidden)
        self.act = make_activation(activation)
        self.c_proj = Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-LayerNorm transformer block."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: Activation, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width, activation)

    def forward(
        self, x: torch.Tensor, *, causal: bool = False, logit_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal, logit_mask=logit_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock`s (CLIP's `transformer.resblocks`)."""

    def __init__(
        self, width: int, layers: int, heads: int, mlp_width: int, activation: Activation, eps: float
    ) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_width, activation, eps) for _ in range(layers)
        )


class DecoderBlock(nn.Module):
    """torch's default `nn.TransformerEncoderLayer`: post-LayerNorm, ReLU feed-forward (dropout off at inference)."""

    def __init__(self, width: int, heads: int, mlp_width: int, eps: float, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = Attention(width, heads, dropout)
        self.linear1 = Linear(width, mlp_width)
        self.linear2 = Linear(mlp_width, width)
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.self_attn(x)))
        # In place: the 2048-wide hidden layer is the decoder's largest tensor (B*tokens*2048 per block).
        feed_forward = self.linear2(self.dropout(F.relu(self.linear1(x), inplace=True)))
        return self.norm2(x + self.dropout(feed_forward))
