"""Typed, frozen model configuration shared by every layer above."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Family = Literal["llama", "gpt2", "falcon", "mpt", "bloom"]
FAMILIES = ("llama", "gpt2", "falcon", "mpt", "bloom")
ALIBI_FAMILIES = ("mpt", "bloom")  # attention biased by distance instead of positional embeddings


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a decoder-only transformer.

    `family` picks the block design:
      - "llama": RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP, no biases
        (Llama, Mistral, Qwen2 and SmolLM all fit; Qwen2 adds q/k/v biases via `attn_bias`).
      - "gpt2": LayerNorm, learned positions, GELU MLP, biases everywhere.
      - "falcon": LayerNorm, rotary positions, one fused q/k/v projection (multi-query or grouped),
        GELU MLP, attention and MLP side by side (`parallel_block`) with one or two norms.
      - "mpt": LayerNorm without bias, ALiBi, fused q/k/v, GELU MLP, no biases.
      - "bloom": LayerNorm after the embedding too, ALiBi, fused q/k/v per head, GELU MLP, biases.
    `sliding_window` W limits attention to the last W positions (Mistral; Qwen2 from layer
    `sliding_window_from` on).
    """

    family: Family = "llama"
    vocab_size: int = 32000
    dim: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = None  # None -> same as n_heads (multi-head attention)
    ffn_dim: int | None = None  # None -> family default
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attn_bias: bool = False  # q/k/v projection biases (Qwen2, GPT-2)
    mlp_bias: bool = False
    head_dim: int | None = None  # None -> dim // n_heads
    qk_norm: bool = False  # RMSNorm on per-head queries and keys (stabilises small-model training)
    logit_softcap: float | None = None  # tanh soft-capping of output logits (speedrun recipes)
    sliding_window: int | None = None  # a query sees itself and the W - 1 positions before it
    sliding_window_from: int = 0  # layers before this one attend to everything (Qwen2's max_window_layers)
    parallel_block: bool = False  # falcon: x + attn(norm(x)) + mlp(norm(x)) instead of one after the other
    parallel_norms: int = 1  # falcon with parallel_block: 2 = separate norms for attention and MLP (ln_attn, ln_mlp)
    alibi_bias_max: float = 8.0  # mpt: ALiBi slopes are 2^(-alibi_bias_max * h / heads)

    def __post_init__(self) -> None:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window <= 0):
            problems.append(f"sliding_window must be a positive integer or None, got {self.sliding_window!r}")
        if not isinstance(self.sliding_window_from, int) or self.sliding_window_from < 0:
            problems.append(f"sliding_window_from must be a non-negative integer, got {self.sliding_window_from!r}")
        if self.parallel_norms not in (1, 2) or (self.parallel_norms == 2 and not self.parallel_block):
            problems.append(f"parallel_norms must be 1, or 2 with parallel_block, got {self.parallel_norms!r}")
        if self.parallel_block and self.family != "falcon":
            problems.append("parallel_block is a falcon option")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems:
            if self.kv_heads <= 0 or self.n_heads % self.kv_heads:
                problems.append(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
            if self.head_dim is None and self.dim % self.n_heads:
                problems.append(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
            if self.family in ("gpt2", "mpt", "bloom") and self.kv_heads != self.n_heads:
                problems.append(f"the {self.family} family has one key/value head per query head (n_kv_heads {self.kv_heads})")
            if self.rotary and self.head_size % 2:
                problems.append(f"rotary embeddings need an even head size, got {self.head_size}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    # Derived properties ----------------------------------------------------------------------
    @property
    def rotary(self) -> bool:
        return self.family in ("llama", "falcon")

    @property
    def alibi(self) -> bool:
        return self.family in ALIBI_FAMILIES

    @property
    def fused_biases(self) -> tuple[bool, bool, bool]:
        """(attention projections, MLP, LayerNorms) carry biases: GPT-2 and BLOOM always, MPT
        never, Falcon as configured (`attn_bias`, `mlp_bias`)."""
        if self.family in ("gpt2", "bloom"):
            return True, True, True
        if self.family == "mpt":
            return False, False, False
        return self.attn_bias, self.mlp_bias, True

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        return _llama_ffn(self.dim) if self.family == "llama" else 4 * self.dim

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Parameter count computed from the shape alone (used for FLOP and cost estimates)."""
        d, h, L = self.dim, self.hidden_dim, self.n_layers
        q = self.n_heads * self.head_size
        kv = self.kv_heads * self.head_size
        attn = d * q + 2 * d * kv + q * d
        if self.family == "llama":
            attn += (q + 2 * kv) * self.attn_bias + 2 * self.head_size * self.qk_norm
            mlp = 3 * d * h + (2 * h + d) * self.mlp_bias
            norms = 2 * d
            final_norm = d
        else:  # fused q/k/v, GELU MLP, LayerNorms (GPT-2, Falcon, MPT, BLOOM)
            attn_bias, mlp_bias, norm_bias = self.fused_biases
            attn += (q + 2 * kv + d) * attn_bias
            mlp = 2 * d * h + (h + d) * mlp_bias
            norm = d * (2 if norm_bias else 1)
            norms = norm * (1 if self.parallel_block and self.parallel_norms == 1 else 2)
            final_norm = norm * (2 if self.family == "bloom" else 1)  # BLOOM normalises the embedding too
        total = L * (attn + mlp + norms) + final_norm
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
            if self.family == "gpt2":
                total += self.max_seq_len * d
        return total

    # Serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _llama_ffn(dim: int, multiple_of: int = 256) -> int:
    # Llama's rule: 2/3 of 4*dim, rounded up to a hardware-friendly multiple.
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)
