"""Decoder-only transformers: the Llama family and GPT-2 style, with a preallocated KV cache.

Parameter names follow each family's Hugging Face layout, so checkpoints, peft adapters and parity
tests need no renaming:
  llama: model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
         post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head
  gpt2:  transformer.{wte, wpe, h.N.{ln_1, attn.{c_attn, c_proj}, ln_2, mlp.{c_fc, c_proj}}, ln_f},
         lm_head (GPT-2's Conv1D weights are stored transposed by HF; io/hf.py transposes them)

Shapes: B batch, T new tokens, S cache slots in use, D model width, H query heads, K kv heads,
Dh head size, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.core.config import ModelConfig


# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------
class KVCache:
    """Preallocated keys and values for every layer: [B, K, max_len, Dh] each.

    All rows of a batch write the same slot range at each step; rows that started shorter are
    left-padded and their padding slots are masked out through `key_valid`.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        if max_len > config.max_seq_len:
            raise ValueError(f"KV cache length {max_len} exceeds the model context {config.max_seq_len}")
        shape = (batch_size, config.kv_heads, max_len, config.head_size)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.batch_size = batch_size
        self.max_len = max_len

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, K, T, Dh] at slots [start, start+T); return all slots used so far."""
        end = start + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (used when finished sequences leave a batch)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.batch_size = int(rows.numel())


@dataclass
class AttentionInputs:
    """What every attention layer needs for one forward call, computed once per call."""

    start: int  # first cache slot written by this call
    mask: torch.Tensor | None  # [B, 1, T, S] bool, True = may attend; None -> plain causal
    cos: torch.Tensor | None  # [B, T, Dh] rotary tables (llama only)
    sin: torch.Tensor | None
    cache: KVCache | None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, inputs: AttentionInputs) -> torch.Tensor:
    """q [B, H, T, Dh], k/v [B, K, T, Dh] -> [B, H, T, Dh] through the fused SDPA kernel."""
    if inputs.cache is not None:
        k, v = inputs.cache.write(layer, inputs.start, k, v)  # [B, K, S, Dh]
    gqa = q.shape[1] != k.shape[1]
    if inputs.mask is None:
        # Without a mask the new tokens are the last T of S slots; causal only matters when T > 1.
        causal = q.shape[2] > 1
        if causal and k.shape[2] != q.shape[2]:
            raise ValueError("a multi-token call after a prefix needs an explicit mask")
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=inputs.mask, enable_gqa=gqa)


# --------------------------------------------------------------------------------------------
# Llama family
# --------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, Dh]; cos/sin [B, T, Dh] (HF's half-split rotary convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.head_size = config.n_heads, config.kv_heads, config.head_size
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_size, bias=config.attn_bias)
        self.k_proj = nn.Linear(config.dim, self.n_kv * self.head_size, bias=config.attn_bias)
        self.v_proj = nn.Linear(config.dim, self.n_kv * self.head_size, bias=config.attn_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_size, config.dim, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_size, config.norm_eps)
            self.k_norm = RMSNorm(self.head_size, config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # [B, H, T, Dh]
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_size).transpose(1, 2)  # [B, K, T, Dh]
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_size).transpose(1, 2)  # [B, K, T, Dh]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q, inputs.cos, inputs.sin)
        k = apply_rotary(k, inputs.cos, inputs.sin)
        y = attend(q, k, v, self.layer, inputs)  # [B, H, T, Dh]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # [B, T, D]


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.hidden_dim, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.dim, config.hidden_dim, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class LlamaBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = LlamaAttention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), inputs)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBackbone(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(LlamaBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_size, 2, dtype=torch.float64) / config.head_size))
        angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float64), inv_freq)  # [L, Dh/2]
        angles = torch.cat((angles, angles), dim=-1)  # [L, Dh]
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        x = self.embed_tokens(ids)  # [B, T, D]
        inputs.cos = self.rope_cos[positions].to(x.dtype)  # [B, T, Dh]
        inputs.sin = self.rope_sin[positions].to(x.dtype)
        for layer in self.layers:
            x = layer(x, inputs)
        return self.norm(x)


# --------------------------------------------------------------------------------------------
# GPT-2 style
# --------------------------------------------------------------------------------------------
class GPT2Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.head_size = config.n_heads, config.head_size
        self.c_attn = nn.Linear(config.dim, 3 * config.dim, bias=True)  # fused q, k, v
        self.c_proj = nn.Linear(config.dim, config.dim, bias=True)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=-1)  # 3 x [B, T, D]
        q, k, v = (t.view(B, T, self.n_heads, self.head_size).transpose(1, 2) for t in (q, k, v))  # [B, H, T, Dh]
        y = attend(q, k, v, self.layer, inputs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, D))


class GPT2MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.dim, config.hidden_dim, bias=True)
        self.c_proj = nn.Linear(config.hidden_dim, config.dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = GPT2Attention(config, layer)
        self.ln_2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = GPT2MLP(config)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), inputs)
        return x + self.mlp(self.ln_2(x))


class GPT2Backbone(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.dim)
        self.wpe = nn.Embedding(config.max_seq_len, config.dim)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.dim, eps=config.norm_eps)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(positions)  # [B, T, D]
        for layer in self.h:
            x = layer(x, inputs)
        return self.ln_f(x)


# --------------------------------------------------------------------------------------------
# The language model
# --------------------------------------------------------------------------------------------
class Transformer(nn.Module):
    """ids -> next-token logits, for either family, with or without a KV cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.family == "llama":
            self.model = LlamaBackbone(config)
            embedding = self.model.embed_tokens
        else:
            self.transformer = GPT2Backbone(config)
            embedding = self.transformer.wte
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = embedding.weight

    @property
    def backbone(self) -> nn.Module:
        return self.model if self.config.family == "llama" else self.transformer

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        weight = self.lm_head.weight
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len,
                       dtype or weight.dtype, weight.device)

    def forward(
        self,
        ids: torch.Tensor,  # [B, T] token ids
        positions: torch.Tensor | None = None,  # [B, T] position of each token (default 0..T-1)
        cache: KVCache | None = None,
        start: int = 0,  # first cache slot to write
        key_valid: torch.Tensor | None = None,  # [B, start+T] bool: False for padding slots
        last_only: bool = False,  # compute logits only for the final position (prefill)
    ) -> torch.Tensor:  # [B, T, V] (or [B, 1, V] with last_only)
        B, T = ids.shape
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model context of {self.config.max_seq_len}")
        if positions is None:
            positions = torch.arange(start, start + T, device=ids.device).expand(B, T)
        mask = None
        if key_valid is not None:
            mask = causal_mask(start, T, ids.device) & key_valid[:, None, None, : start + T]  # [B, 1, T, S]
        elif cache is not None and start > 0 and T > 1:
            mask = causal_mask(start, T, ids.device)[None, None]
        inputs = AttentionInputs(start=start, mask=mask, cos=None, sin=None, cache=cache)
        hidden = self.backbone(ids, positions, inputs)  # [B, T, D]
        if last_only:
            hidden = hidden[:, -1:]
        logits = self.lm_head(hidden)  # [B, T, V]
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits


def causal_mask(start: int, T: int, device: torch.device) -> torch.Tensor:
    """[T, start+T] bool: query i (at slot start+i) may see slots 0..start+i."""
    query_slot = torch.arange(start, start + T, device=device)[:, None]
    key_slot = torch.arange(start + T, device=device)[None, :]
    return key_slot <= query_slot


def init_weights(model: Transformer, seed: int | None = None) -> None:
    """GPT-2 style initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layers)
    for name, param in model.named_parameters():
        if param.dim() < 2:
            with torch.no_grad():
                param.copy_(torch.ones_like(param) if name.endswith("weight") else torch.zeros_like(param))
            continue
        std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight", "c_proj.weight")) else 0.02
        with torch.no_grad():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
