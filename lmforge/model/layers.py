"""Building blocks the model families share: the norm, the activation table, the attention core and
padding masks. Each family file (transformer.py, t5.py, bert.py, vision.py) keeps its own layer
classes, with its Hugging Face parameter names, and calls these for the arithmetic they have in
common.

    RMSNorm           x / rms(x) * weight: Llama-family decoders, T5, the ViT of vision.py
    ACTIVATIONS       Hugging Face's activation names -> functions (T5's feed-forward, BERT)
    split_heads       [B, L, H * Dh] -> [B, H, L, Dh]
    attend_heads      softmax(q k^T * scale + bias) v over heads, merged back to [B, T, H * Dh]:
                      T5 (no score scale; position bias plus masks) and BERT (padding mask)
    padding_bias      an additive [B, 1, 1, S] bias hiding padded keys (attention_mask 0)

The decoder's attention (`transformer.attend`) is the same softmax(q k^T / sqrt(Dh) + mask) v but
also writes its static KV cache, groups query heads over shared key/value heads and folds queries
for speculative decoding; it stays in transformer.py, where lmforge/infer's tuned decode step
reads it, and uses RMSNorm from here.

Shapes: B batch, T queries, S keys, L either, H heads, Dh head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact (erf) GELU: Hugging Face's "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # the tanh approximation (T5's gated-gelu, GPT-2)
    "silu": F.silu,
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, L, H * Dh] -> [B, H, L, Dh]."""
    B, L, width = x.shape
    return x.view(B, L, n_heads, width // n_heads).transpose(1, 2)


def attend_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                 scale: float | None = None) -> torch.Tensor:
    """q [B, H, T, Dh] over k/v [B, H, S, Dh] -> [B, T, H * Dh] (heads merged, ready for the output
    projection). `bias` broadcasts to [B, H, T, S]: a float bias added to the scores (positions,
    masks as large negative numbers) or a bool mask (True = may attend); None attends to every key.
    `scale` multiplies the scores (default 1/sqrt(Dh); T5 uses 1)."""
    if bias is not None and bias.dtype != torch.bool:
        bias = bias.to(q.dtype)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    B, H, T, Dh = y.shape
    return y.transpose(1, 2).reshape(B, T, H * Dh)


def padding_bias(attention_mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
    """[B, 1, 1, S] additive bias over the keys of `hidden` [B, S, D] that hides padded ones
    (attention_mask 0) with the dtype's minimum, as Hugging Face does; None without a mask."""
    if attention_mask is None:
        return None
    return (~attention_mask.bool())[:, None, None, :].to(hidden.dtype) * torch.finfo(hidden.dtype).min
