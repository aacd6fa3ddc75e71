"""Encoder-decoder transformer in the T5 layout, with a decoder KV cache and greedy generation.

Parameter names are Hugging Face's `T5ForConditionalGeneration` ones, so a folder moves between
lmforge and `transformers` without a renaming table (lmforge/io/hf_seq2seq.py reads and writes it):

    shared                                           token embedding (encoder and decoder)
    encoder.block.N.layer.0.SelfAttention.{q,k,v,o}  (block 0 adds relative_attention_bias)
    encoder.block.N.layer.0.layer_norm
    encoder.block.N.layer.1.DenseReluDense.{wi | wi_0, wi_1, wo}, .layer.1.layer_norm
    encoder.final_layer_norm
    decoder.block.N.layer.0.SelfAttention..., layer.1.EncDecAttention.{q,k,v,o}, layer.2.DenseReluDense
    decoder.final_layer_norm, lm_head

What makes T5 T5: RMS layer norms before each sub-layer (no mean, no bias); attention without the
1/sqrt(Dh) scale; no position embeddings, but a learned bias per head added to the attention scores,
looked up by the bucketed distance between query and key (computed once in the first block of each
stack and reused by every layer); with tied embeddings the decoder output is scaled by d_model^-0.5
before the shared head.

The norm, the activations, the attention core and the padding bias are the ones every family
shares (lmforge/model/layers.py).

Shapes: B batch, S encoder tokens, T decoder tokens, D d_model, H heads, Dh d_kv, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmforge.model.layers import ACTIVATIONS, RMSNorm, attend_heads, padding_bias, split_heads


@dataclass(frozen=True)
class T5Config:
    """The fields of Hugging Face's T5Config that shape the model (same names, same defaults as t5-small)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None -> num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"  # relu | gated-gelu | gelu | gated-relu | silu | gated-silu
    layer_norm_epsilon: float = 1e-6
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.num_decoder_layers is not None and (not isinstance(self.num_decoder_layers, int) or self.num_decoder_layers <= 0):
            problems.append(f"num_decoder_layers must be a positive integer, got {self.num_decoder_layers!r}")
        parts = self.feed_forward_proj.split("-")
        if not (len(parts) == 1 or (len(parts) == 2 and parts[0] == "gated")) or parts[-1] not in ("relu", "gelu", "silu"):
            problems.append(f"feed_forward_proj must be relu, gelu, silu or gated-<one of them>, got {self.feed_forward_proj!r}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < (self.vocab_size if isinstance(self.vocab_size, int) else 0):
                problems.append(f"{name} must be a token id below vocab_size, got {value!r}")
        if problems:
            raise ValueError("invalid T5Config: " + "; ".join(problems))

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        name = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "T5 config") -> "T5Config":
        """From our own dict or a Hugging Face config.json (other keys there are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None

    def replace(self, **changes: Any) -> "T5Config":
        return dataclasses.replace(self, **changes)


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Bucket of each key-minus-query distance: exact buckets for small distances, then
    logarithmically wider ones up to `max_distance` (everything further shares the last bucket).
    A bidirectional (encoder) table spends half its buckets on keys after the query; the causal
    (decoder) table only sees keys at or before the query."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


class T5Attention(nn.Module):
    """Multi-head attention without score scaling; the first block of a stack owns the position bias."""

    def __init__(self, config: T5Config, *, has_relative_bias: bool, bidirectional: bool) -> None:
        super().__init__()
        self.n_heads, self.d_kv = config.num_heads, config.d_kv
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = config.relative_attention_num_buckets, config.relative_attention_max_distance
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def position_bias(self, query_positions: torch.Tensor, key_length: int) -> torch.Tensor:
        """[1, H, Tq, Tk] bias for queries at `query_positions` [Tq] over keys 0..key_length-1."""
        keys = torch.arange(key_length, device=query_positions.device)
        bucket = relative_position_bucket(keys[None, :] - query_positions[:, None], self.bidirectional,
                                          self.num_buckets, self.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1)[None]

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D] queries over keys/values [B, H, S, Dh]; bias [B or 1, H or 1, T or 1, S] holds
        positions and masks (None: every key). No 1/sqrt(Dh) score scale."""
        return self.o(attend_heads(split_heads(self.q(x), self.n_heads), keys, values, bias, scale=1.0))

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, H, S, Dh] of x [B, S, D]."""
        return split_heads(self.k(x), self.n_heads), split_heads(self.v(x), self.n_heads)


class T5FeedForward(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.gated = config.gated
        if self.gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(hidden)


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.DenseReluDense = T5FeedForward(config)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, first: bool, bidirectional: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_bias=first, bidirectional=bidirectional)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(config, has_relative_bias=False, bidirectional=True)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)


class T5Block(nn.Module):
    """Encoder block: layer = [self-attention, feed-forward]; decoder block: [self-attention,
    cross-attention, feed-forward]."""

    def __init__(self, config: T5Config, first: bool, decoder: bool) -> None:
        super().__init__()
        parts: list[nn.Module] = [T5LayerSelfAttention(config, first, bidirectional=not decoder)]
        if decoder:
            parts.append(T5LayerCrossAttention(config))
        parts.append(T5LayerFF(config))
        self.layer = nn.ModuleList(parts)


@dataclass
class T5Cache:
    """Decoder state while generating: per layer, the self-attention keys/values of the tokens so
    far [B, H, t, Dh] (grown by one step at a time) and the cross-attention keys/values of the
    encoder output [B, H, S, Dh] (computed once), plus the encoder's padding bias [B, 1, 1, S]
    (None without padding)."""

    self_kv: list[tuple[torch.Tensor, torch.Tensor]]
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]
    encoder_bias: torch.Tensor | None
    length: int = 0


class T5Stack(nn.Module):
    def __init__(self, config: T5Config, decoder: bool) -> None:
        super().__init__()
        self.decoder = decoder
        layers = config.decoder_layers if decoder else config.num_layers
        self.block = nn.ModuleList(T5Block(config, first=i == 0, decoder=decoder) for i in range(layers))
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    @property
    def bias_owner(self) -> T5Attention:
        return self.block[0].layer[0].SelfAttention

    def encode(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Encoder: embeddings [B, S, D] -> hidden states [B, S, D]."""
        S = x.shape[1]
        bias = self.bias_owner.position_bias(torch.arange(S, device=x.device), S)  # [1, H, S, S]
        padding = padding_bias(attention_mask, x)  # [B, 1, 1, S]
        if padding is not None:
            bias = bias + padding
        for block in self.block:
            attention, ff = block.layer
            h = attention.layer_norm(x)
            x = x + attention.SelfAttention(h, *attention.SelfAttention.project_kv(h), bias)
            x = ff(x)
        return self.final_layer_norm(x)

    def decode(self, x: torch.Tensor, cache: T5Cache) -> torch.Tensor:
        """Decoder: embeddings [B, T, D] of the next T tokens -> hidden states [B, T, D]; appends
        their keys/values to `cache` (which also holds the encoder side)."""
        T, past = x.shape[1], cache.length
        total = past + T
        positions = torch.arange(past, total, device=x.device)
        causal = torch.arange(total, device=x.device)[None, :] > positions[:, None]  # [T, total] True = future
        bias = self.bias_owner.position_bias(positions, total).masked_fill(causal, torch.finfo(x.dtype).min)
        for index, block in enumerate(self.block):
            self_attention, cross, ff = block.layer
            h = self_attention.layer_norm(x)
            k, v = self_attention.SelfAttention.project_kv(h)
            if past:
                old_k, old_v = cache.self_kv[index]
                k, v = torch.cat((old_k, k), dim=2), torch.cat((old_v, v), dim=2)
            if index < len(cache.self_kv):
                cache.self_kv[index] = (k, v)
            else:
                cache.self_kv.append((k, v))
            x = x + self_attention.SelfAttention(h, k, v, bias)
            x = x + cross.EncDecAttention(cross.layer_norm(x), *cache.cross_kv[index], cache.encoder_bias)
            x = ff(x)
        cache.length = total
        return self.final_layer_norm(x)


class T5ForConditionalGeneration(nn.Module):
    """(encoder ids, decoder ids) -> next-token logits of the decoder, T5 style."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, decoder=False)
        self.decoder = T5Stack(config, decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder hidden states [B, S, D] of input_ids [B, S] (attention_mask [B, S]: 0 = padding)."""
        return self.encoder.encode(self.shared(input_ids), attention_mask)

    def start_cache(self, encoder_hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> T5Cache:
        """A decoder cache over an encoded input: the cross-attention keys/values of every layer."""
        cross = [block.layer[1].EncDecAttention.project_kv(encoder_hidden) for block in self.decoder.block]
        return T5Cache(self_kv=[], cross_kv=cross, encoder_bias=padding_bias(attention_mask, encoder_hidden))

    def decode(self, decoder_ids: torch.Tensor, cache: T5Cache) -> torch.Tensor:
        """Logits [B, T, V] of decoder_ids [B, T] that continue the cached decoder state."""
        hidden = self.decoder.decode(self.shared(decoder_ids), cache)
        if self.config.tie_word_embeddings:
            hidden = hidden * self.config.d_model ** -0.5
        return self.lm_head(hidden)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits [B, T, V] of the decoder over the encoded input."""
        cache = self.start_cache(self.encode(input_ids, attention_mask), attention_mask)
        return self.decode(decoder_input_ids, cache)

    def shift_right(self, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Decoder inputs for `labels` [B, T]: the start token, then the labels but the last (ignored
        positions become padding)."""
        shifted = labels.new_full(labels.shape, self.config.decoder_start_token_id)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == ignore_index, self.config.pad_token_id)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 32) -> torch.Tensor:
        """Greedy decoding: [B, 1 + n] starting with decoder_start_token_id, each row ending at its
        first eos (later slots hold pad_token_id); stops when every row has ended or after
        `max_new_tokens`. One encoder pass, then one cached decoder step per token."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        config = self.config
        cache = self.start_cache(self.encode(input_ids, attention_mask), attention_mask)
        B = input_ids.shape[0]
        out = input_ids.new_full((B, 1), config.decoder_start_token_id)
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits = self.decode(out[:, -1:], cache)[:, -1]
            token = logits.argmax(-1).masked_fill(done, config.pad_token_id)
            out = torch.cat((out, token[:, None]), dim=1)
            done |= token == config.eos_token_id
            if bool(done.all()):
                break
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def init_t5_weights(model: T5ForConditionalGeneration, seed: int | None = None) -> None:
    """T5's initialisation (Mesh TensorFlow's): each weight ~ N(0, fan_in^-0.5) with queries also
    scaled by Dh^-0.5 (standing in for the missing score scale), embeddings N(0, 1), norms 1."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    config = model.config
    for name, param in model.named_parameters():
        with torch.no_grad():
            if param.dim() == 1:
                param.fill_(1.0)
                continue
            if name.endswith("shared.weight") or name.endswith("lm_head.weight"):
                std = 1.0
            elif name.endswith("relative_attention_bias.weight"):
                std = config.d_model ** -0.5
            elif name.endswith(".q.weight"):
                std = (config.d_model * config.d_kv) ** -0.5
            else:
                std = param.shape[1] ** -0.5
            param.copy_(torch.randn(param.shape, generator=generator) * std)
