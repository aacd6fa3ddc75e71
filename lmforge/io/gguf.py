"""Read GGUF files (llama.cpp's format) into an lmforge model, tokenizer and chat template.

Order of work matters for untrusted files: `open_gguf` checks the header and tensor table with a
bounded parser and the model metadata against the tensor shapes first; only then does it decode
the tokenizer arrays and memory-map the tensor data (`gguf.GGUFReader` is not used: it trusts
declared lengths and spends a kilobyte per array element).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.core.config import ModelConfig
from lmforge.io.gguf_validate import ARCHITECTURES, FUSED_ARCHITECTURES, open_gguf
from lmforge.model.quant import GroupQuantized
from lmforge.model.transformer import Transformer, fused_names
from lmforge.tokenizer.tokenizer import Tokenizer

# Quantization types we dequantize (the gguf package's numpy kernels do the arithmetic; it has none
# for Q8_K, which llama.cpp only uses inside its dot products, never in files).
SUPPORTED_TYPES = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K"}

# Block formats that load as they are into lmforge's quantized layers (see `read_blocks`).
PACKED_TYPES = {"Q4_0", "Q4_1", "Q8_0"}
QUANT_MODES = ("none", "auto", "int8", "int4")


@dataclass
class GGUFContents:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    metadata: dict[str, Any]  # scalar metadata (arrays left out)
    packed: dict[str, GroupQuantized]  # module name -> weight kept in its file quantization


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32, quant: str = "none") -> GGUFContents:
    """Validate, then read config, weights (HF names) and tokenizer from a GGUF file.

    `quant` "none" or "int8" dequantizes every tensor to `dtype`; "auto" and "int4" keep Q4_0, Q4_1
    and Q8_0 matrices as they are stored (`GGUFContents.packed`, exact) and dequantize the rest.
    """
    import gguf  # imported here so that merely importing lmforge.io stays light

    if quant not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode {quant!r}; choose one of {', '.join(QUANT_MODES)}")
    path = Path(path)
    opened = open_gguf(path)
    meta = opened.metadata
    config = config_from_metadata(meta, path, {t.name for t in opened.tensors})
    tokenizer = Tokenizer.from_gguf_metadata(meta)
    state_dict: dict[str, torch.Tensor] = {}
    packed: dict[str, GroupQuantized] = {}
    for tensor in opened.tensors:
        type_name = tensor.tensor_type.name
        if type_name not in SUPPORTED_TYPES:
            raise ValueError(f"bad GGUF file {path.name}: tensor {tensor.name!r} has unsupported type {type_name}")
        shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists the fastest dimension first
        if quant in ("auto", "int4") and type_name in PACKED_TYPES and len(shape) == 2:
            blocks = read_blocks(type_name, np.asarray(tensor.data), shape)
            for name, value in hf_tensors(config, meta["general.architecture"], tensor.name, blocks):
                packed[name.removesuffix(".weight")] = value
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(shape)
        if not values.flags.writeable:  # plain F32 tensors come straight from the read-only memory map
            values = values.copy()
        weight = torch.from_numpy(values)
        for name, value in hf_tensors(config, meta["general.architecture"], tensor.name, weight):
            state_dict[name] = value.to(dtype)
    # Files of tied models simply have no output.weight.
    config = config.replace(tie_embeddings="lm_head.weight" not in state_dict and "lm_head" not in packed)
    scalars = {k: v for k, v in meta.items() if not isinstance(v, list)}
    return GGUFContents(config, state_dict, tokenizer, scalars, packed)


def describe_gguf(path: str | os.PathLike) -> tuple[ModelConfig, Tokenizer]:
    """Config and tokenizer of a GGUF file, without reading any tensor data."""
    path = Path(path)
    opened = open_gguf(path)
    config = config_from_metadata(opened.metadata, path, {t.name for t in opened.tensors})
    tied = not any(t.name == "output.weight" for t in opened.tensors)
    return config.replace(tie_embeddings=tied), Tokenizer.from_gguf_metadata(opened.metadata)


def read_blocks(type_name: str, data: np.ndarray, shape: tuple[int, int]) -> GroupQuantized:
    """Q4_0 / Q4_1 / Q8_0 blocks of 32 weights as exact integers with their fp16 scale (and minimum).

    Q8_0: d, 32 x int8 (w = d * q). Q4_0: d, 16 bytes of nibbles (w = d * (q - 8)). Q4_1: d, m,
    16 bytes of nibbles (w = d * q + m). A block's byte j holds element j (low nibble) and j + 16.
    """
    rows, width = shape
    header = {"Q8_0": 2, "Q4_0": 2, "Q4_1": 4}[type_name]
    payload = 32 if type_name == "Q8_0" else 16
    if width % 32:
        raise ValueError(f"{type_name} tensor of width {width} is not made of 32-weight blocks")
    blocks = torch.from_numpy(np.array(data, dtype=np.uint8, copy=True).reshape(-1, header + payload))  # off the read-only map
    if blocks.shape[0] != rows * width // 32:
        raise ValueError(f"{type_name} tensor data holds {blocks.shape[0]} blocks, its shape {shape} needs {rows * width // 32}")
    groups = (rows, width // 32)
    scales = blocks[:, 0:2].contiguous().view(torch.float16).float().view(groups)
    zeros = blocks[:, 2:4].contiguous().view(torch.float16).float().view(groups) if type_name == "Q4_1" else None
    body = blocks[:, header:]
    if type_name == "Q8_0":
        values = body.contiguous().view(torch.int8)
    else:
        values = torch.cat((body & 15, body >> 4), dim=1).to(torch.int8)  # [blocks, 32]
        if type_name == "Q4_0":
            values = values - 8
    return GroupQuantized(values.reshape(rows, width), scales, zeros, 32)


def load_gguf_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", quant: str = "none",
                    compute_dtype: torch.dtype = torch.bfloat16) -> tuple[Transformer, Tokenizer]:
    """The model and tokenizer of a GGUF file; `quant` as in `load_gguf` ("int8"/"int4" also
    quantize the float tensors; see `lmforge.model.quant`)."""
    contents = load_gguf(path, dtype, quant=quant)
    model = Transformer.from_state_dict(contents.config, contents.state_dict, device=device, quant=quant,
                                        packed=contents.packed, compute_dtype=compute_dtype)
    return model, contents.tokenizer


# --------------------------------------------------------------------------------------------
# Metadata -> ModelConfig
# --------------------------------------------------------------------------------------------
def config_from_metadata(meta: dict[str, Any], path: Path, tensor_names: set[str] = frozenset()) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"bad GGUF file {path.name}: general.architecture {arch!r} is not supported "
                         f"(supported: {', '.join(sorted(ARCHITECTURES))})")

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            raise ValueError(f"bad GGUF file {path.name}: missing metadata {full}")
        return meta[full]

    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get(f"{arch}.vocab_size", len(tokens) if tokens else None)
    if vocab is None:
        raise ValueError(f"bad GGUF file {path.name}: no {arch}.vocab_size and no tokenizer.ggml.tokens")
    dim, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
    common = dict(
        vocab_size=int(vocab),
        dim=dim,
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        ffn_dim=int(need("feed_forward_length")),
        max_seq_len=int(need("context_length")),
    )
    if arch == "gpt2":
        return ModelConfig(family="gpt2", norm_eps=float(need("attention.layer_norm_epsilon")),
                           tie_embeddings=True, attn_bias=True, mlp_bias=True, **common)
    if arch in FUSED_ARCHITECTURES:
        # llama.cpp runs Falcon blocks in parallel (Falcon-40B files add attn_norm_2) without
        # linear biases, and MPT with ALiBi slopes from max_alibi_bias.
        return ModelConfig(
            family=arch, norm_eps=float(need("attention.layer_norm_epsilon")),
            n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
            rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            parallel_block=arch == "falcon",
            parallel_norms=2 if "blk.0.attn_norm_2.weight" in tensor_names else 1,
            alibi_bias_max=float(meta.get(f"{arch}.attention.max_alibi_bias", 8.0)), **common,
        )
    head_dim = meta.get(f"{arch}.attention.key_length")
    window = meta.get(f"{arch}.attention.sliding_window")
    return ModelConfig(
        family="llama",
        sliding_window=int(window) if isinstance(window, int) and window > 0 else None,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        attn_bias=arch == "qwen2",
        head_dim=int(head_dim) if head_dim and int(head_dim) != dim // n_heads else None,
        **common,
    )


# --------------------------------------------------------------------------------------------
# GGUF tensor names -> Hugging Face names
# --------------------------------------------------------------------------------------------
_LLAMA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LLAMA_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
_GPT2_BLOCK = {
    "attn_norm.weight": "ln_1.weight", "attn_norm.bias": "ln_1.bias",
    "attn_qkv.weight": "attn.c_attn.weight", "attn_qkv.bias": "attn.c_attn.bias",
    "attn_output.weight": "attn.c_proj.weight", "attn_output.bias": "attn.c_proj.bias",
    "ffn_norm.weight": "ln_2.weight", "ffn_norm.bias": "ln_2.bias",
    "ffn_up.weight": "mlp.c_fc.weight", "ffn_up.bias": "mlp.c_fc.bias",
    "ffn_down.weight": "mlp.c_proj.weight", "ffn_down.bias": "mlp.c_proj.bias",
}
_GPT2_TOP = {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
             "output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias",
             "output.weight": "lm_head.weight"}


def fused_gguf_names(config: ModelConfig) -> tuple[dict[str, str], dict[str, str]]:
    """GGUF -> HF names (top level, per block) of Falcon, MPT and BLOOM, from the model's own names.
    Falcon-40B files call ln_mlp attn_norm and ln_attn attn_norm_2 (llama.cpp's reading)."""
    names = fused_names(config)
    top = {"token_embd.weight": f"transformer.{names.embed}.weight", "output.weight": "lm_head.weight"}
    for kind in ("weight", "bias"):
        top[f"output_norm.{kind}"] = f"transformer.{names.final_norm}.{kind}"
        if names.embed_norm is not None:
            top[f"token_embd_norm.{kind}"] = f"transformer.{names.embed_norm}.{kind}"
    parts = {"attn_qkv": f"{names.attn}.{names.qkv}", "attn_output": f"{names.attn}.{names.out}",
             "ffn_up": f"{names.mlp}.{names.up}", "ffn_down": f"{names.mlp}.{names.down}"}
    if config.parallel_norms == 2:
        parts.update(attn_norm=names.mlp_norm, attn_norm_2=names.attn_norm)
    else:
        parts["attn_norm"] = names.attn_norm
        if names.mlp_norm is not None:
            parts["ffn_norm"] = names.mlp_norm
    block = {f"{gguf_name}.{kind}": f"{hf_name}.{kind}" for gguf_name, hf_name in parts.items() for kind in ("weight", "bias")}
    return top, block


def blocks_to_groups(rows: torch.Tensor, n_heads: int, kv_heads: int) -> torch.Tensor:
    """llama.cpp's Falcon and BLOOM files hold the fused q/k/v rows as [all q | all k | all v];
    the models want K groups of [H/K q heads, k head, v head] (rows [(H + 2K) * Dh, ...])."""
    head = rows.shape[0] // (n_heads + 2 * kv_heads)
    rest = rows.shape[1:]
    q, k, v = rows.split((n_heads * head, kv_heads * head, kv_heads * head))
    groups = (q.reshape(kv_heads, n_heads // kv_heads, head, *rest), k.reshape(kv_heads, 1, head, *rest),
              v.reshape(kv_heads, 1, head, *rest))
    return torch.cat(groups, dim=1).reshape(rows.shape)


def hf_tensors(config: ModelConfig, arch: str, name: str, weight: torch.Tensor):
    """Yield (hf_name, tensor) for one GGUF tensor, undoing llama.cpp's Q/K row permutation
    (llama) and its q/k/v regrouping (Falcon, BLOOM)."""
    if arch in FUSED_ARCHITECTURES:
        yield _fused_tensor(config, arch, name, weight)
        return
    llama = config.family == "llama"
    top, block = (_LLAMA_TOP, _LLAMA_BLOCK) if llama else (_GPT2_TOP, _GPT2_BLOCK)
    if name in top:
        yield top[name], weight
        return
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in block:
        layer, suffix = int(parts[1]), parts[2]
        prefix = f"model.layers.{layer}." if llama else f"transformer.h.{layer}."
        heads = None
        if llama and arch != "qwen2" and suffix in ("attn_q.weight", "attn_q.bias"):
            heads = config.n_heads
        elif llama and arch != "qwen2" and suffix in ("attn_k.weight", "attn_k.bias"):
            heads = config.kv_heads
        if heads is not None and isinstance(weight, GroupQuantized):
            weight = weight.map_rows(lambda rows: unpermute_rows(rows, heads))
        elif heads is not None:
            weight = unpermute_rows(weight, heads)
        yield prefix + block[suffix], weight
        return
    if name.startswith("rope_freqs"):
        raise ValueError(f"GGUF tensor {name!r}: scaled rotary frequencies are not supported")
    raise ValueError(f"GGUF tensor {name!r} is not part of a {arch} model")


def unpermute_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's conversion, which interleaves the two rotary halves of every head."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _fused_tensor(config: ModelConfig, arch: str, name: str, weight):
    top, block = fused_gguf_names(config)
    if name in top:
        return top[name], weight
    parts = name.split(".", 2)
    if len(parts) != 3 or parts[0] != "blk" or not parts[1].isdigit() or parts[2] not in block:
        raise ValueError(f"GGUF tensor {name!r} is not part of a {arch} model")
    suffix = parts[2]
    if arch in ("falcon", "bloom") and suffix.startswith("attn_qkv."):
        regroup = lambda rows: blocks_to_groups(rows, config.n_heads, config.kv_heads)  # noqa: E731
        weight = weight.map_rows(regroup) if isinstance(weight, GroupQuantized) else regroup(weight)
    layers = fused_names(config).layers
    return f"transformer.{layers}.{parts[1]}.{block[suffix]}", weight
