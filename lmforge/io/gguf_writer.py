"""Write GGUF files (llama.cpp's format) with the `gguf` package's writer: f32, f16 or q8_0.

The inverse of `lmforge.io.gguf`: Hugging Face names -> GGUF names through the reader's own tables,
Q/K rows permuted back the llama.cpp way for the "llama" architecture, llama.cpp's type rules
(norms and biases stay F32; q8_0 only where a row splits into 32-value blocks, F16 otherwise), and
the tokenizer as `tokenizer.ggml.*` metadata plus the chat template, so the file reopens in our
loader, in `transformers` (`gguf_file=`) and in llama.cpp.

The pre-tokenizer is stored by *name* (`tokenizer.ggml.pre`). Our Tokenizer keeps no such name, so
it is found by round trip: each candidate's tokenizer is rebuilt from the metadata about to be
written and must encode probe texts exactly like the source tokenizer; none matching is an error.
The file is written beside its destination and renamed into place, never left half written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.io.gguf import _GPT2_BLOCK, _GPT2_TOP, _LLAMA_BLOCK, _LLAMA_TOP
from lmforge.io.hf import hf_incompatibilities
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["GGUF_TYPES", "gguf_tensors", "infer_pre_tokenizer", "permute_rows", "save_gguf", "tokenizer_metadata"]

GGUF_TYPES = ("f32", "f16", "q8_0")

# Pre-tokenizer names to try, one per distinct splitting rule in `lmforge.tokenizer.gguf_vocab`.
PRE_CANDIDATES = ("gpt-2", "smollm", "llama-bpe", "qwen2", "tekken", "gpt-4o", "dbrx", "default")
PROBES = (
    "Hello world! It's 12345 apples, don't you think? I'll say we've 3.14159 reasons.",
    "  Indented\tline\n\n\nnaïve café Ünïcödé 日本語のテキスト 🙂👍🏽 — dash…  trailing   ",
    "x=1234567;y+=89 // COMMENT\r\nHELLO'S WORLD'LL\u00a0ok 2024-01-01T00:00:00Z $1,000.00",
    "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n391<|im_end|>\n",
)

# llama.cpp's token types (gguf.TokenType)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def permute_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's Q/K row order (rotary halves interleaved per head); inverse of `unpermute_rows`."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _architecture(model: Transformer) -> str:
    config = model.config
    if config.family not in ("llama", "gpt2"):
        raise ValueError(f"GGUF export supports the llama and gpt2 families; a {config.family} model exports as a "
                         "Hugging Face folder")
    if config.family == "gpt2":
        return "gpt2"
    return "qwen2" if config.attn_bias else "llama"


def gguf_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """GGUF name -> float32 tensor (HF layout, Q/K permuted for llama), tied output head left out."""
    config, arch = model.config, _architecture(model)
    llama = config.family == "llama"
    top, block = (_LLAMA_TOP, _LLAMA_BLOCK) if llama else (_GPT2_TOP, _GPT2_BLOCK)
    top_inverse = {hf: name for name, hf in top.items()}
    block_inverse = {hf: name for name, hf in block.items()}
    prefix = "model.layers." if llama else "transformer.h."
    out = {}
    for key, value in model.state_dict().items():
        if config.tie_embeddings and key == "lm_head.weight":
            continue
        value = value.detach().float().cpu()
        if key in top_inverse:
            out[top_inverse[key]] = value
            continue
        layer, _, suffix = key.removeprefix(prefix).partition(".")
        if not key.startswith(prefix) or not layer.isdigit() or suffix not in block_inverse:
            hint = " (LoRA layers must be merged first)" if ".lora_" in key else ""
            raise ValueError(f"cannot export tensor {key!r}: GGUF's {arch} architecture has no tensor for it{hint}")
        name = block_inverse[suffix]
        if arch == "llama" and name in ("attn_q.weight", "attn_q.bias"):
            value = permute_rows(value, config.n_heads)
        elif arch == "llama" and name in ("attn_k.weight", "attn_k.bias"):
            value = permute_rows(value, config.kv_heads)
        out[f"blk.{layer}.{name}"] = value
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer metadata
# --------------------------------------------------------------------------------------------
def _merges(tokenizer: Tokenizer) -> list[str]:
    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise ValueError("GGUF export supports byte-level BPE tokenizers only "
                         f"(this one is {model.get('type')!r} with a {decoder.get('type')!r} decoder)")
    merges = []
    for merge in model.get("merges") or []:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        merges.append(f"{left} {right}")
    return merges


def tokenizer_metadata(tokenizer: Tokenizer, vocab_size: int, pre: str) -> dict[str, Any]:
    """`tokenizer.ggml.*` and `tokenizer.chat_template` values, tokens padded to the model's vocabulary."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {vocab_size} embeddings")
    added = tokenizer.backend.get_added_tokens_decoder()
    tokens, types = [], []
    for index in range(vocab_size):
        text = tokenizer.backend.id_to_token(index) if index < tokenizer.vocab_size else None
        if text is None:  # embedding rows beyond the vocabulary (or holes in it)
            tokens.append(f"[PAD{index}]")
            types.append(TOKEN_UNUSED)
            continue
        tokens.append(text)
        if index in added:
            types.append(TOKEN_CONTROL if added[index].special else TOKEN_USER_DEFINED)
        else:
            types.append(TOKEN_NORMAL)
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": _merges(tokenizer),
        "tokenizer.ggml.add_bos_token": tokenizer.add_bos_token,
        "tokenizer.ggml.add_space_prefix": False,
    }
    for key, value in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("padding", tokenizer.pad_id)):
        if value is not None:
            meta[f"tokenizer.ggml.{key}_token_id"] = value
    if tokenizer.chat_template:
        meta["tokenizer.chat_template"] = tokenizer.chat_template
    return meta


def infer_pre_tokenizer(tokenizer: Tokenizer, meta: dict[str, Any], candidates: tuple[str, ...] = PRE_CANDIDATES) -> str:
    """The first pre-tokenizer name whose rebuilt tokenizer encodes the probes exactly like `tokenizer`."""
    expected = [tokenizer.encode(text) for text in PROBES]
    spec = json.loads(tokenizer.backend.to_str()).get("pre_tokenizer") or {}
    ordered = list(candidates)
    if "Digits" in json.dumps(spec):  # a cheap hint about which to try first; the round trip decides
        ordered.sort(key=lambda name: name != "smollm")
    for name in ordered:
        try:
            rebuilt = Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.pre": name})
        except ValueError:
            continue
        if [rebuilt.encode(text) for text in PROBES] == expected:
            return name
    raise ValueError("GGUF export: no llama.cpp pre-tokenizer reproduces this tokenizer's splitting "
                     f"(tried {', '.join(ordered)}); pass pre= explicitly if you know it")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _encode(value: torch.Tensor, qtype: str) -> tuple[np.ndarray, Any]:
    """(array, raw_dtype) for one tensor under llama.cpp's type rules."""
    import gguf

    array = value.numpy().astype(np.float32)
    if array.ndim < 2 or qtype == "f32":
        return array, None
    if qtype == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


def save_gguf(model: Transformer, tokenizer: Tokenizer, path: str | os.PathLike, qtype: str = "f16",
              name: str | None = None, pre: str | None = None) -> Path:
    """Write `model` and `tokenizer` as one GGUF file at `path` (atomically); return the path."""
    import gguf

    if qtype not in GGUF_TYPES:
        raise ValueError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, got {qtype!r}")
    problems = hf_incompatibilities(model.config)
    if problems:
        raise ValueError(f"GGUF export cannot represent {', '.join(problems)}")
    config, arch = model.config, _architecture(model)
    path = Path(path)
    tensors = gguf_tensors(model)  # fails early on unmerged LoRA layers

    token_meta = tokenizer_metadata(tokenizer, config.vocab_size, pre or "gpt-2")
    if pre is None:
        token_meta["tokenizer.ggml.pre"] = infer_pre_tokenizer(tokenizer, token_meta)
    else:
        Tokenizer.from_gguf_metadata(token_meta)  # validates the name

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        writer.add_type("model")
        writer.add_name(name or f"lmforge {arch} {config.num_parameters() / 1e6:.0f}M")
        writer.add_context_length(config.max_seq_len)
        writer.add_embedding_length(config.dim)
        writer.add_block_count(config.n_layers)
        writer.add_feed_forward_length(config.hidden_dim)
        writer.add_head_count(config.n_heads)
        writer.add_vocab_size(config.vocab_size)
        if config.family == "gpt2":
            writer.add_layer_norm_eps(config.norm_eps)
        else:
            writer.add_head_count_kv(config.kv_heads)
            writer.add_rope_freq_base(config.rope_theta)
            writer.add_rope_dimension_count(config.head_size)
            writer.add_layer_norm_rms_eps(config.norm_eps)
            if config.head_size != config.dim // config.n_heads:
                writer.add_key_length(config.head_size)
                writer.add_value_length(config.head_size)
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model(token_meta["tokenizer.ggml.model"])
        writer.add_tokenizer_pre(token_meta["tokenizer.ggml.pre"])
        writer.add_token_list(token_meta["tokenizer.ggml.tokens"])
        writer.add_token_types(token_meta["tokenizer.ggml.token_type"])
        writer.add_token_merges(token_meta["tokenizer.ggml.merges"])
        writer.add_add_bos_token(token_meta["tokenizer.ggml.add_bos_token"])
        writer.add_add_space_prefix(False)
        if "tokenizer.ggml.bos_token_id" in token_meta:
            writer.add_bos_token_id(token_meta["tokenizer.ggml.bos_token_id"])
        if "tokenizer.ggml.eos_token_id" in token_meta:
            writer.add_eos_token_id(token_meta["tokenizer.ggml.eos_token_id"])
        if "tokenizer.ggml.padding_token_id" in token_meta:
            writer.add_pad_token_id(token_meta["tokenizer.ggml.padding_token_id"])
        if "tokenizer.chat_template" in token_meta:
            writer.add_chat_template(token_meta["tokenizer.chat_template"])

        for tensor_name, value in tensors.items():
            array, raw_dtype = _encode(value, qtype)
            writer.add_tensor(tensor_name, array, raw_dtype=raw_dtype)  # quantized: shape from the bytes
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        writer.close()
        if tmp.exists():
            tmp.unlink()
    return path
