"""Decoder-only transformers with a preallocated KV cache: the Llama family (Llama, Mistral,
Qwen2, SmolLM) and the fused-projection families (GPT-2, Falcon, MPT, BLOOM).

Parameter names follow each family's Hugging Face layout, so checkpoints, peft adapters and parity
tests need no renaming:
  llama:  model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
          post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head
  gpt2:   transformer.{wte, wpe, h.N.{ln_1, attn.{c_attn, c_proj}, ln_2, mlp.{c_fc, c_proj}}, ln_f},
          lm_head (GPT-2's Conv1D weights are stored transposed by HF; io/hf.py transposes them)
  falcon: transformer.{word_embeddings, h.N.{input_layernorm | ln_attn + ln_mlp,
          self_attention.{query_key_value, dense}, [post_attention_layernorm], mlp.{dense_h_to_4h,
          dense_4h_to_h}}, ln_f}, lm_head
  mpt:    transformer.{wte, blocks.N.{norm_1, attn.{Wqkv, out_proj}, norm_2, ffn.{up_proj, down_proj}},
          norm_f}, lm_head
  bloom:  transformer.{word_embeddings, word_embeddings_layernorm, h.N.{input_layernorm,
          self_attention.{query_key_value, dense}, post_attention_layernorm, mlp.{dense_h_to_4h,
          dense_4h_to_h}}, ln_f}, lm_head
The four fused families are one backbone (`FusedBackbone`) configured by a table of names
(`FUSED_NAMES`) and the ModelConfig: which positions (learned, rotary, ALiBi), how the fused q/k/v
output is laid out, whether attention and MLP run side by side, which layers carry biases.

Shapes: B batch, T new tokens, S cache slots in use, D model width, H query heads, K kv heads,
Dh head size, V vocabulary.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.core.config import ModelConfig
from lmforge.model.layers import RMSNorm  # shared with T5 and the ViT (model/layers.py)
from lmforge.model.quant import GroupQuantized, quantize_model


# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------
class KVCache:
    """Preallocated keys and values for every layer: [rows, K, max_len, Dh] each.

    Each cache row holds one sequence, which may be at its own length: a forward call writes the
    new tokens of row b at slots [starts[b], starts[b] + T). Rows of finished sequences are freed
    by moving the last active row into their place (`move_row`), so active rows stay contiguous
    and decode reads the cache by slicing, never by gathering.
    """

    def __init__(self, config: ModelConfig, rows: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        if max_len > config.max_seq_len:
            raise ValueError(f"KV cache length {max_len} exceeds the model context {config.max_seq_len}")
        shape = (rows, config.kv_heads, max_len, config.head_size)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.rows = rows
        self.max_len = max_len

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of one layer."""
        return self.keys[index], self.values[index]

    @staticmethod
    def write(layer_kv: tuple[torch.Tensor, torch.Tensor], inputs: "AttentionInputs", k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, K, T, Dh] for rows [first_row, first_row+B) into one layer's tensors;
        return their slots [0, end)."""
        B, T = k.shape[0], k.shape[2]
        rows = slice(inputs.first_row, inputs.first_row + B)
        keys, values = layer_kv
        if inputs.uniform:
            start = inputs.starts[0]
            keys[rows, :, start:start + T] = k
            values[rows, :, start:start + T] = v
        else:
            row_index = torch.arange(inputs.first_row, inputs.first_row + B, device=k.device)[:, None]  # [B, 1]
            keys[row_index, :, inputs.positions] = k.transpose(1, 2)  # indexed view is [B, T, K, Dh]
            values[row_index, :, inputs.positions] = v.transpose(1, 2)
        return keys[rows, :, :inputs.end], values[rows, :, :inputs.end]

    def move_row(self, source: int, target: int) -> None:
        """Copy row `source` over row `target` (used to keep active rows contiguous)."""
        for tensor in (*self.keys, *self.values):
            tensor[target].copy_(tensor[source])


@dataclass
class AttentionInputs:
    """What every attention layer needs for one forward call, computed once per call."""

    starts: list[int]  # per row: first cache slot this call writes (host-side, no device sync)
    positions: torch.Tensor  # [B, T] absolute position of every new token
    uniform: bool  # all rows start at the same slot (slice writes instead of scatter)
    end: int  # slots [0, end) are read back from the cache
    # [B, 1, T, S] bool, True = may attend; None -> causal or full. ALiBi models get a float
    # bias instead, [B, H, T, S]: -slope_h * distance where allowed, -inf elsewhere.
    mask: torch.Tensor | None
    cache: KVCache | None
    first_row: int = 0
    cos: torch.Tensor | None = None  # [B, T, Dh] rotary tables (llama only)
    sin: torch.Tensor | None = None
    # The cache tensors of the layer being run, set by the backbone before each block: blocks see
    # tensors, never a layer number, so one compiled block serves every layer.
    kv: tuple[torch.Tensor, torch.Tensor] | None = None
    fold_queries: bool = False  # see attend_each_query (decode_step sets it)
    window_mask: torch.Tensor | None = None  # like `mask`, for sliding-window layers (None: no window)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
    """x through every block, handing each its own cache tensors."""
    for index, block in enumerate(blocks):
        inputs.kv = inputs.cache.layer(index) if inputs.cache is not None else None
        x = block(x, inputs)
    inputs.kv = None
    return x


# PyTorch's fused CPU attention runs bf16 on AMX tiles where the CPU has them: 2.5x faster than
# fp32 for a 512-token prompt and never slower in decoding (measured, 2 threads). Without AMX it
# was several times slower than fp32, so there bf16 inputs are computed in fp32.
BF16_CPU_ATTENTION = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: AttentionInputs,
           window: bool = False, gqa: bool | None = None) -> torch.Tensor:
    """q [B, H, T, Dh], k/v [B, K, T, Dh] -> [B, H, T, Dh] through the fused SDPA kernel.
    `window`: this layer uses the sliding window (`inputs.window_mask`, when the model has one).
    `gqa`: H != K, given by layers that know it (read from the shapes, it becomes a symbolic value
    that SDPA refuses once torch.compile has seen models with other head counts)."""
    if inputs.kv is not None:
        k, v = KVCache.write(inputs.kv, inputs, k, v)  # [B, K, S, Dh]
    if gqa is None:
        gqa = q.shape[1] != k.shape[1]
    dtype = q.dtype
    if q.device.type == "cpu" and dtype == torch.bfloat16 and not BF16_CPU_ATTENTION:
        q, k, v = q.float(), k.float(), v.float()
    mask = inputs.window_mask if window and inputs.window_mask is not None else inputs.mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)  # an ALiBi bias
    if inputs.fold_queries and (q.shape[2] > 1 or torch.compiler.is_compiling()):
        return attend_each_query(q, k, v, mask).to(dtype)
    if mask is None:
        # No mask: either a fresh causal sequence (S == T) or single-token decode over all slots.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=gqa)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.to(dtype)


def attend_each_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of T queries per row computed as T single-query heads: each query then goes
    through exactly the arithmetic of decoding it alone, so verifying drafts reproduces plain
    decoding bit for bit. q [B, H, T, Dh], k/v [B, K, S, Dh], mask [B, 1, T, S] -> [B, H, T, Dh]."""
    B, H, T, Dh = q.shape
    S = k.shape[2]
    # Heads ordered (kv head, query head of that group, t): grouped-query attention then pairs
    # folded head i with kv head i // (H // K * T), as the unfolded query would be.
    folded = q.reshape(B, H * T, 1, Dh)
    per_head_mask = mask.expand(B, H, T, S).reshape(B, H * T, 1, S)
    if torch.compiler.is_compiling():  # see single_query_attention; eager keeps the fused kernel
        return single_query_attention(folded, k, v, per_head_mask).view(B, H, T, Dh)
    y = F.scaled_dot_product_attention(folded, k, v, attn_mask=per_head_mask, enable_gqa=True)  # H * T > K
    return y.view(B, H, T, Dh)


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of one query per head, q [B, H, 1, Dh], k/v [B, K, S, Dh], mask [B, H, 1, S] (bool,
    or an ALiBi bias) -> [B, H, 1, Dh], as two batched matrix products around a softmax.

    Under torch.compile this is what decoding uses: the fused SDPA kernel spends most of its time
    on per-call setup when each head has a single query (profiled in the compiled step of the
    embedded model, 8 rows x 256 slots, 2 threads: 0.49 ms a layer in SDPA, 0.26 ms in these two
    products)."""
    B, H, _, Dh = q.shape
    K, S = k.shape[1], k.shape[2]
    grouped = q.view(B, K, H // K, Dh)  # the query heads sharing each key/value head, side by side
    scores = torch.matmul(grouped, k.transpose(-1, -2)) * Dh ** -0.5  # [B, K, H/K, S]
    mask = mask.view(B, K, H // K, S)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v).view(B, H, 1, Dh)


# --------------------------------------------------------------------------------------------
# Llama family
# --------------------------------------------------------------------------------------------
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, Dh]; cos/sin [B, T, Dh] (HF's half-split rotary convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class Rotary(nn.Module):
    """Rotary tables for every position: cos/sin [L, Dh], non-persistent buffers (built, not loaded)."""

    def __init__(self, theta: float, head_size: int, max_len: int) -> None:
        super().__init__()
        self.theta, self.head_size, self.max_len = theta, head_size, max_len
        self.register_buffer("cos", torch.empty(max_len, head_size), persistent=False)
        self.register_buffer("sin", torch.empty(max_len, head_size), persistent=False)
        self.reset()

    def reset(self) -> None:
        """Fill the tables (in float64 for accuracy, stored as float32); a no-op on the meta device."""
        device = self.cos.device
        if device.type == "meta":
            return
        exponents = torch.arange(0, self.head_size, 2, dtype=torch.float64, device=device) / self.head_size
        inv_freq = 1.0 / (self.theta ** exponents)  # [Dh/2]
        angles = torch.outer(torch.arange(self.max_len, dtype=torch.float64, device=device), inv_freq)  # [L, Dh/2]
        angles = torch.cat((angles, angles), dim=-1)  # [L, Dh]
        self.cos = angles.cos().float()
        self.sin = angles.sin().float()

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, T, Dh]."""
        return self.cos[positions].to(dtype), self.sin[positions].to(dtype)


def uses_window(config: ModelConfig, layer: int) -> bool:
    """Whether layer `layer` attends through the sliding window."""
    return config.sliding_window is not None and layer >= config.sliding_window_from


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.sliding = uses_window(config, layer)
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

    # Quantized models may hold these as one layer (lmforge.model.quant fuses them): one matrix
    # product reading the three weights instead of three calls.
    FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        B, T, _ = x.shape
        if "qkv_proj" in self._modules:
            q, k, v = self.qkv_proj(x).split([self.n_heads * self.head_size, self.n_kv * self.head_size,
                                             self.n_kv * self.head_size], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # [B, H, T, Dh]
        k = k.view(B, T, self.n_kv, self.head_size).transpose(1, 2)  # [B, K, T, Dh]
        v = v.view(B, T, self.n_kv, self.head_size).transpose(1, 2)  # [B, K, T, Dh]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q, inputs.cos, inputs.sin)
        k = apply_rotary(k, inputs.cos, inputs.sin)
        y = attend(q, k, v, inputs, window=self.sliding, gqa=self.n_heads != self.n_kv)  # [B, H, T, Dh]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # [B, T, D]


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.hidden_dim, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.dim, config.hidden_dim, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=config.mlp_bias)

    FUSED_PROJECTIONS = {"gate_up_proj": ("gate_proj", "up_proj")}  # see LlamaAttention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "gate_up_proj" in self._modules:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)  # SwiGLU


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
        self.rotary = Rotary(config.rope_theta, config.head_size, config.max_seq_len)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        x = self.embed_tokens(ids)  # [B, T, D]
        inputs.cos, inputs.sin = self.rotary(positions, x.dtype)  # [B, T, Dh] each
        return self.norm(run_blocks(self.layers, x, inputs))


# --------------------------------------------------------------------------------------------
# Fused-projection families: GPT-2, Falcon, MPT, BLOOM
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FusedNames:
    """Hugging Face attribute names of one fused family's modules (None: the family has none)."""

    embed: str
    layers: str
    final_norm: str
    attn_norm: str
    mlp_norm: str | None
    attn: str
    qkv: str
    out: str
    mlp: str
    up: str
    down: str
    positions: str | None = None  # learned position embeddings (GPT-2)
    embed_norm: str | None = None  # LayerNorm right after the embedding (BLOOM)


_BLOOM_LIKE = dict(layers="h", final_norm="ln_f", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
                   attn="self_attention", qkv="query_key_value", out="dense", mlp="mlp", up="dense_h_to_4h",
                   down="dense_4h_to_h", embed="word_embeddings")
FUSED_NAMES = {
    "gpt2": FusedNames(embed="wte", positions="wpe", layers="h", final_norm="ln_f", attn_norm="ln_1", mlp_norm="ln_2",
                       attn="attn", qkv="c_attn", out="c_proj", mlp="mlp", up="c_fc", down="c_proj"),
    "mpt": FusedNames(embed="wte", layers="blocks", final_norm="norm_f", attn_norm="norm_1", mlp_norm="norm_2",
                      attn="attn", qkv="Wqkv", out="out_proj", mlp="ffn", up="up_proj", down="down_proj"),
    "bloom": FusedNames(**_BLOOM_LIKE, embed_norm="word_embeddings_layernorm"),
    "falcon": FusedNames(**_BLOOM_LIKE),  # sequential blocks; see fused_names for the parallel ones
}


def fused_names(config: ModelConfig) -> FusedNames:
    """The names for `config`: Falcon's parallel blocks have one shared norm or ln_attn + ln_mlp."""
    names = FUSED_NAMES[config.family]
    if config.parallel_block and config.parallel_norms == 2:
        return dataclasses.replace(names, attn_norm="ln_attn", mlp_norm="ln_mlp")
    if config.parallel_block:
        return dataclasses.replace(names, mlp_norm=None)
    return names


class FusedAttention(nn.Module):
    """Attention whose q, k, v come out of one projection. Its output [B, T, (H + 2K) * Dh] is laid out
      - by blocks: [all queries | all keys | all values] (GPT-2, MPT), or
      - by groups: K groups of [H/K query heads, 1 key head, 1 value head] (Falcon, whose multi-query
        layout is K = 1; BLOOM and Falcon-7B's predecessors are K = H: [q, k, v] per head).
    Positions come from rotary tables (Falcon) or from the ALiBi bias in the mask (MPT, BLOOM)."""

    def __init__(self, config: ModelConfig, names: FusedNames, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.head_size = config.n_heads, config.kv_heads, config.head_size
        self.grouped = config.family in ("falcon", "bloom")
        self.rotary = config.rotary
        self.sliding = uses_window(config, layer)
        self.qkv_name, self.out_name = names.qkv, names.out
        bias = config.fused_biases[0]
        width = (self.n_heads + 2 * self.n_kv) * self.head_size
        self.add_module(names.qkv, nn.Linear(config.dim, width, bias=bias))
        self.add_module(names.out, nn.Linear(self.n_heads * self.head_size, config.dim, bias=bias))

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        B, T, _ = x.shape
        H, K, Dh = self.n_heads, self.n_kv, self.head_size
        qkv = getattr(self, self.qkv_name)(x)  # [B, T, (H + 2K) * Dh]
        if self.grouped:
            groups = qkv.view(B, T, K, H // K + 2, Dh)
            q = groups[:, :, :, :-2].reshape(B, T, H, Dh)
            k, v = groups[:, :, :, -2], groups[:, :, :, -1]  # [B, T, K, Dh]
        else:
            q, k, v = qkv.split((H * Dh, K * Dh, K * Dh), dim=-1)
            q, k, v = q.view(B, T, H, Dh), k.view(B, T, K, Dh), v.view(B, T, K, Dh)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H or K, T, Dh]
        if self.rotary:
            q = apply_rotary(q, inputs.cos, inputs.sin)
            k = apply_rotary(k, inputs.cos, inputs.sin)
        y = attend(q, k, v, inputs, window=self.sliding, gqa=self.n_heads != self.n_kv)  # [B, H, T, Dh]
        return getattr(self, self.out_name)(y.transpose(1, 2).reshape(B, T, H * Dh))  # [B, T, D]


class GeluMLP(nn.Module):
    """up -> GELU -> down (tanh-approximated GELU for GPT-2 and BLOOM, exact for Falcon and MPT)."""

    def __init__(self, config: ModelConfig, names: FusedNames) -> None:
        super().__init__()
        bias = config.fused_biases[1]
        self.up_name, self.down_name = names.up, names.down
        self.approximate = "tanh" if config.family in ("gpt2", "bloom") else "none"
        self.add_module(names.up, nn.Linear(config.dim, config.hidden_dim, bias=bias))
        self.add_module(names.down, nn.Linear(config.hidden_dim, config.dim, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(getattr(self, self.up_name)(x), approximate=self.approximate)  # [B, T, F]
        return getattr(self, self.down_name)(hidden)  # [B, T, D]


def layer_norm(config: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.dim, eps=config.norm_eps, bias=config.fused_biases[2])


class FusedBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm1(x)), then + mlp(norm2(.)); with `parallel_block`
    (Falcon) both read the block input: x + attn(norm1(x)) + mlp(norm2(x) or norm1(x))."""

    def __init__(self, config: ModelConfig, names: FusedNames, layer: int) -> None:
        super().__init__()
        self.parallel = config.parallel_block
        self.names = names
        self.add_module(names.attn_norm, layer_norm(config))
        self.add_module(names.attn, FusedAttention(config, names, layer))
        if names.mlp_norm is not None:
            self.add_module(names.mlp_norm, layer_norm(config))
        self.add_module(names.mlp, GeluMLP(config, names))

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        names = self.names
        attention, mlp = getattr(self, names.attn), getattr(self, names.mlp)
        normed = getattr(self, names.attn_norm)(x)  # [B, T, D]
        if self.parallel:
            mlp_in = getattr(self, names.mlp_norm)(x) if names.mlp_norm is not None else normed
            return x + attention(normed, inputs) + mlp(mlp_in)
        x = x + attention(normed, inputs)
        return x + mlp(getattr(self, names.mlp_norm)(x))


class FusedBackbone(nn.Module):
    """Embedding (+ learned positions, + LayerNorm) -> fused blocks -> final LayerNorm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.names = names = fused_names(config)
        self.add_module(names.embed, nn.Embedding(config.vocab_size, config.dim))
        if names.positions is not None:
            self.add_module(names.positions, nn.Embedding(config.max_seq_len, config.dim))
        if names.embed_norm is not None:
            self.add_module(names.embed_norm, layer_norm(config))
        self.add_module(names.layers, nn.ModuleList(FusedBlock(config, names, i) for i in range(config.n_layers)))
        self.add_module(names.final_norm, layer_norm(config))
        self.rotary = Rotary(config.rope_theta, config.head_size, config.max_seq_len) if config.rotary else None

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        names = self.names
        x = getattr(self, names.embed)(ids)  # [B, T, D]
        if names.positions is not None:
            x = x + getattr(self, names.positions)(positions)
        if names.embed_norm is not None:
            x = getattr(self, names.embed_norm)(x)
        if self.rotary is not None:
            inputs.cos, inputs.sin = self.rotary(positions, x.dtype)  # [B, T, Dh] each
        return getattr(self, names.final_norm)(run_blocks(getattr(self, names.layers), x, inputs))


def alibi_slopes(config: ModelConfig) -> torch.Tensor:
    """ALiBi's per-head slope [H]: the bias of a key d positions back is -slope * d.

    For H a power of two both families use 2^(-8h/H), h = 1..H. Otherwise BLOOM takes the slopes of
    the nearest lower power of two P and adds every other slope of 2P; MPT takes the slopes of the
    next power of two P (with alibi_bias_max in place of 8) and keeps the odd ones, then the even ones.
    """
    H = config.n_heads
    if config.family == "mpt":
        P = 2 ** math.ceil(math.log2(H))
        slopes = 2.0 ** (-torch.arange(1, P + 1, dtype=torch.float64, device="cpu") * (config.alibi_bias_max / P))
        if P != H:
            slopes = torch.cat((slopes[1::2], slopes[::2]))[:H]
        return slopes.float()
    P = 2 ** math.floor(math.log2(H))
    slopes = 2.0 ** (-8.0 / P * torch.arange(1, P + 1, dtype=torch.float64, device="cpu"))
    if P != H:
        extra = 2.0 ** (-8.0 / (2 * P) * torch.arange(1, 2 * (H - P), 2, dtype=torch.float64, device="cpu"))
        slopes = torch.cat((slopes, extra))
    return slopes.float()


# --------------------------------------------------------------------------------------------
# The language model
# --------------------------------------------------------------------------------------------
class Transformer(nn.Module):
    """ids -> next-token logits, for any family, with or without a KV cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.family == "llama":
            self.model = LlamaBackbone(config)
        else:
            self.transformer = FusedBackbone(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        # ALiBi slopes as plain numbers: no buffer for .to(bfloat16) to round.
        self.alibi = tuple(alibi_slopes(config).tolist()) if config.alibi else None

    @property
    def backbone(self) -> nn.Module:
        return self.model if self.config.family == "llama" else self.transformer

    @property
    def embedding(self) -> nn.Embedding:
        if self.config.family == "llama":
            return self.model.embed_tokens
        return getattr(self.transformer, self.transformer.names.embed)

    @property
    def layers(self) -> nn.ModuleList:
        """The blocks, in order (`model.layers`, `transformer.h` or `transformer.blocks`)."""
        if self.config.family == "llama":
            return self.model.layers
        return getattr(self.transformer, self.transformer.names.layers)

    @property
    def final_norm(self) -> nn.Module:
        if self.config.family == "llama":
            return self.model.norm
        return getattr(self.transformer, self.transformer.names.final_norm)

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state_dict: dict[str, torch.Tensor],
                        device: str | torch.device = "cpu", *, quant: str = "none",
                        packed: dict[str, GroupQuantized] | None = None,
                        compute_dtype: torch.dtype = torch.bfloat16) -> "Transformer":
        """Build a model straight from weights (no throwaway random init); dtype follows the weights.

        `packed` maps module names (`model.layers.0.mlp.up_proj`) to weights already quantized
        (GGUF blocks): those layers are built quantized and take no float weight. `quant` "int8" or
        "int4" quantizes every other linear layer and the embedding too; "auto" keeps them float.
        """
        packed = dict(packed or {})
        if quant not in ("none", "auto", "int8", "int4"):
            raise ValueError(f"unknown quantization mode {quant!r}; choose none, auto, int8 or int4")
        if (packed or quant in ("int8", "int4")) and torch.device(device).type != "cpu":
            raise ValueError("quantized layers run on the CPU kernels; load with quant='none' for another device")
        with torch.device("meta"):
            model = cls(config)
        tied = {"lm_head.weight"} if config.tie_embeddings else set()
        if config.tie_embeddings and "lm_head" in packed:
            raise ValueError("a tied head is quantized with its embedding; pack the embedding, not lm_head")
        skipped = tied | {f"{name}.weight" for name in packed}
        weights = {k: v for k, v in state_dict.items() if k not in tied}
        expected = {k for k in model.state_dict() if k not in skipped}
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        if missing or unexpected:
            raise ValueError(f"weights do not match the {config.family} model: missing {missing[:4]}, unexpected {unexpected[:4]}")
        try:
            model.load_state_dict(weights, strict=False, assign=True)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(f"weights do not match the model config: {error}") from None
        if config.tie_embeddings:
            model.lm_head.weight = model.embedding.weight
        for name, q in packed.items():
            module = model.get_submodule(name)
            if tuple(module.weight.shape) != q.shape:
                raise ValueError(f"packed weight for {name} has shape {q.shape}, the model expects {tuple(module.weight.shape)}")
        if packed or quant in ("int8", "int4"):
            dtype = next(v.dtype for v in weights.values()) if weights else torch.float32
            model = quantize_model(model, "int8" if quant == "int8" else "int4", packed=packed,
                                   keep_float=quant in ("none", "auto"), inplace=True,
                                   compute_dtype=compute_dtype, activation_dtype=dtype)
        for module in model.modules():  # non-persistent tables are still on the meta device
            if isinstance(module, Rotary):
                module.cos = torch.empty(config.max_seq_len, config.head_size)
                module.sin = torch.empty(config.max_seq_len, config.head_size)
                module.reset()
        return model.to(device).eval()

    @property
    def activation_dtype(self) -> torch.dtype:
        """The dtype hidden states flow in (that of the final norm's weight)."""
        return self.final_norm.weight.dtype

    def new_cache(self, rows: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        return KVCache(self.config, rows, max_len or self.config.max_seq_len, dtype or self.activation_dtype,
                       self.lm_head.weight.device)

    def forward(
        self,
        ids: torch.Tensor,  # [B, T] token ids
        cache: KVCache | None = None,
        starts: list[int] | None = None,  # with a cache: per row, slots already filled (default 0)
        first_row: int = 0,  # with a cache: the cache row that batch row 0 uses
        padding_mask: torch.Tensor | None = None,  # without a cache: [B, T] bool, False = right padding
        segment_ids: torch.Tensor | None = None,  # without a cache: [B, T] int, documents packed in a row
        last_only: bool = False,  # compute logits only for the final position (prefill)
        logits_at: torch.Tensor | None = None,  # [B] compute logits only at this position of each row
        head: bool = True,  # False: return the final hidden states [B, T, D] (heads over the backbone, model/heads.py)
    ) -> torch.Tensor:  # [B, T, V] (or [B, 1, V] with last_only / logits_at)
        """Logits of every position. `segment_ids` marks the documents packed into each row (equal ids
        next to each other): a token attends only within its document, and positions restart at each
        document, so a packed row computes what its documents would compute alone."""
        B, T = ids.shape
        starts = list(starts) if starts is not None else [0] * B
        if len(starts) != B:
            raise ValueError(f"starts has {len(starts)} entries for a batch of {B}")
        end = max(starts) + T
        if end > self.config.max_seq_len:
            raise ValueError(f"sequence of {end} tokens exceeds the model context of {self.config.max_seq_len}")
        if cache is not None and end > cache.max_len:
            raise ValueError(f"sequence of {end} tokens exceeds the KV cache length of {cache.max_len}")
        uniform = all(s == starts[0] for s in starts)
        steps = torch.arange(T, device=ids.device)
        positions = (torch.tensor(starts, device=ids.device)[:, None] + steps) if not uniform else (steps + starts[0]).expand(B, T)
        mask = None
        if segment_ids is not None:
            if cache is not None or padding_mask is not None:
                raise ValueError("segment_ids is for cache-free calls and replaces padding_mask (give padding its own segment)")
            if segment_ids.shape != ids.shape:
                raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}; ids have {tuple(ids.shape)}")
            same_document = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, T]
            mask = (causal_mask(0, T, ids.device) & same_document)[:, None]  # [B, 1, T, T]
            starts_here = torch.ones_like(segment_ids, dtype=torch.bool)
            starts_here[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
            index = steps.expand(B, T)
            positions = index - torch.where(starts_here, index, 0).cummax(dim=1).values  # [B, T] from 0 per document
        elif padding_mask is not None:
            if cache is not None:
                raise ValueError("padding_mask is for cache-free calls; cached rows carry their own lengths")
            mask = causal_mask(0, T, ids.device) & padding_mask[:, None, None, :].bool()  # [B, 1, T, T]
        elif not uniform:
            key_slot = torch.arange(end, device=ids.device)
            mask = (key_slot[None, None, :] <= positions[:, :, None])[:, None]  # [B, 1, T, S]
        elif starts[0] > 0 and T > 1:
            mask = causal_mask(starts[0], T, ids.device)[None, None]  # [1, 1, T, S]
        if mask is None and (self.config.sliding_window is not None or self.config.alibi):
            mask = causal_mask(starts[0], T, ids.device)[None, None]  # [1, 1, T, S]: both need it spelled out
        # Query and key slots: distances for the window and ALiBi (positions restart per document,
        # slots do not; within a document the distances agree).
        query_slots = steps.expand(B, T) if segment_ids is not None else positions  # [B, T]
        mask, window_mask = self.position_masks(mask, query_slots, torch.arange(end, device=ids.device))
        inputs = AttentionInputs(starts=starts, positions=positions, uniform=uniform, end=end, mask=mask,
                                 cache=cache, first_row=first_row, window_mask=window_mask)
        hidden = self.backbone(ids, positions, inputs)  # [B, T, D]
        if not head:
            return hidden
        if last_only:
            hidden = hidden[:, -1:]
        elif logits_at is not None:  # right-padded prefill: each row's last real token
            hidden = hidden[torch.arange(B, device=ids.device), logits_at][:, None]  # [B, 1, D]
        return self.head_logits(hidden)  # [B, T, V]

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits [..., V] of final hidden states [..., D] (for `head=False` callers that
        need logits at a few positions only)."""
        logits = self.lm_head(hidden)
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def decode_step(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                    slots: int | torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] for T new tokens per row (T = 1 to decode, more to verify drafts).

        ids [B, T] go to cache rows [0, B) at slots `positions` [B, T] (a tensor: each row at its
        own length). Attention reads the first `slots` cache slots of every row (an int, or a
        tensor [S] holding 0..S-1, whose length a compiler can treat as symbolic; default: the
        whole cache) under a mask, so shapes never depend on the lengths: compiled once, this step
        runs at every length without recompiling.
        """
        if slots is None:
            slots = cache.max_len
        key_slot = torch.arange(slots, device=ids.device) if isinstance(slots, int) else slots
        mask = (key_slot <= positions[:, :, None])[:, None]  # [B, 1, T, S]
        mask, window_mask = self.position_masks(mask, positions, key_slot)
        inputs = AttentionInputs(starts=[], positions=positions, uniform=False, end=key_slot.shape[0], mask=mask,
                                 cache=cache, fold_queries=True, window_mask=window_mask)
        return self.head_logits(self.backbone(ids, positions, inputs))

    def position_masks(self, mask: torch.Tensor | None, query_slots: torch.Tensor,
                       key_slots: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The masks for full and sliding-window layers, from the causal/padding mask [B|1, 1, T, S]
        (None = plain causal, only for models with neither window nor ALiBi).

        With a window W, a query at slot q sees keys at slots q - W < k <= q. With ALiBi, masks turn
        into float biases [B, H, T, S]: -slope_h * (q - k) where allowed, -inf elsewhere."""
        if mask is None:
            return None, None
        distance = query_slots[:, None, :, None] - key_slots  # [B, 1, T, S]
        window_mask = None
        if self.config.sliding_window is not None:
            window_mask = mask & (distance < self.config.sliding_window)
        if self.alibi is not None:
            slopes = torch.tensor(self.alibi, device=distance.device)  # [H]
            bias = -slopes[:, None, None] * distance  # [B, H, T, S]
            mask = torch.where(mask, bias, float("-inf"))
            if window_mask is not None:
                window_mask = torch.where(window_mask, bias, float("-inf"))
        return mask, window_mask


def causal_mask(start: int, T: int, device: torch.device) -> torch.Tensor:
    """[T, start+T] bool: query i (at slot start+i) may see slots 0..start+i."""
    query_slot = torch.arange(start, start + T, device=device)[:, None]
    key_slot = torch.arange(start + T, device=device)[None, :]
    return key_slot <= query_slot


# The projections that write into the residual stream, in every family's names.
RESIDUAL_PROJECTIONS = ("o_proj.weight", "down_proj.weight", "c_proj.weight", "out_proj.weight", "dense.weight",
                        "dense_4h_to_h.weight")


def init_weights(model: Transformer, seed: int | None = None) -> None:
    """GPT-2 style initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layers)
    for name, param in model.named_parameters():
        if param.dim() < 2:
            with torch.no_grad():
                param.copy_(torch.ones_like(param) if name.endswith("weight") else torch.zeros_like(param))
            continue
        std = residual_std if name.endswith(RESIDUAL_PROJECTIONS) else 0.02
        with torch.no_grad():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
