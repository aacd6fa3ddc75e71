"""Hugging Face folders: config.json + *.safetensors + tokenizer files, read and written.

An lmforge checkpoint *is* such a folder, so `transformers` opens our checkpoints directly. The
config.json also carries the full lmforge ModelConfig under "lmforge_config", which keeps options
that have no Hugging Face field (qk-norm, logit soft-capping) lossless for our own loader.
Only safetensors are read: pickled weight files are refused, never unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lmforge.core.config import ModelConfig
from lmforge.io.gguf_validate import context_too_long
from lmforge.model.heads import SCORE_NAME, ScalarHeadModel
from lmforge.model.transformer import FUSED_NAMES, Transformer
from lmforge.tokenizer.tokenizer import Tokenizer

LLAMA_LIKE = ("llama", "mistral", "qwen2")
# Every config.json model_type we load, and the family it becomes (old Falcon checkpoints name
# themselves RefinedWeb*).
MODEL_TYPES = {"gpt2": "gpt2", **dict.fromkeys(LLAMA_LIKE, "llama"), "falcon": "falcon", "RefinedWeb": "falcon",
               "RefinedWebModel": "falcon", "mpt": "mpt", "bloom": "bloom"}
# The other architectures' model_types (io/hf_seq2seq.py loads them, not this module): what they are
# and what to use them with, named when a decoder verb (generate, chat, serve, eval...) is given one.
OTHER_ARCHITECTURES = {
    "t5": ("a T5 encoder-decoder", "generate with `lmforge t5-generate --model FOLDER --text ...`"),
    "bert": ("a BERT encoder", "it does not generate text: fill masks with `lmforge fill-mask --model FOLDER --text "
                               "'... <mask> ...'` (a BertForMaskedLM folder)"),
    "lmforge-lstm": ("an LSTM language model", "generate with `lmforge lstm-generate --model FOLDER --prompt ...`"),
}
# GPT-2 stores these as Conv1D weights of shape [in, out]; our nn.Linear wants [out, in].
GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
MAX_CONFIG_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json (not a Hugging Face model folder)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: config.json is implausibly large")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def config_from_hf(data: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Map a Hugging Face config dict to ModelConfig (Llama, Mistral, Qwen2, GPT-2, Falcon, MPT, BLOOM)."""
    if isinstance(data.get("lmforge_config"), dict):
        return ModelConfig.from_dict(data["lmforge_config"])
    model_type = data.get("model_type")

    def need(key: str, *aliases: str) -> Any:
        for name in (key, *aliases):
            if name in data:
                return data[name]
        raise ValueError(f"{where}: missing field {key!r} for model_type {model_type!r}")

    def refuse(what: str) -> ValueError:
        return ValueError(f"{where}: {model_type} with {what} is not supported")

    if model_type in ("falcon", "RefinedWeb", "RefinedWebModel"):
        return _falcon_config(data, need, refuse)
    if model_type == "mpt":
        return _mpt_config(data, need, refuse)
    if model_type == "bloom":
        if data.get("apply_residual_connection_post_layernorm"):
            raise refuse("apply_residual_connection_post_layernorm")
        dim = int(need("hidden_size", "n_embed"))
        return ModelConfig(
            family="bloom", vocab_size=int(need("vocab_size")), dim=dim, n_layers=int(need("n_layer", "num_hidden_layers")),
            n_heads=int(need("n_head", "num_attention_heads")), ffn_dim=4 * dim, max_seq_len=int(data.get("seq_length", 2048)),
            norm_eps=float(data.get("layer_norm_epsilon", 1e-5)), tie_embeddings=bool(data.get("tie_word_embeddings", True)),
        )

    if model_type == "gpt2":
        return ModelConfig(
            family="gpt2", vocab_size=int(need("vocab_size")), dim=int(need("n_embd")), n_layers=int(need("n_layer")),
            n_heads=int(need("n_head")), ffn_dim=data.get("n_inner") or 4 * int(need("n_embd")),
            max_seq_len=int(need("n_positions")), norm_eps=float(data.get("layer_norm_epsilon", 1e-5)),
            tie_embeddings=bool(data.get("tie_word_embeddings", True)), attn_bias=True, mlp_bias=True,
        )
    if model_type in OTHER_ARCHITECTURES:
        what, instead = OTHER_ARCHITECTURES[model_type]
        raise ValueError(f"{where}: model_type {model_type!r} is {what}, not a decoder-only model, so this command "
                         f"cannot use it; {instead}")
    if model_type not in LLAMA_LIKE:
        raise ValueError(f"{where}: model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
    theta = _rope_theta(data, refuse)
    dim, n_heads = int(need("hidden_size")), int(need("num_attention_heads"))
    head_dim = data.get("head_dim")
    return ModelConfig(
        family="llama", vocab_size=int(need("vocab_size")), dim=dim, n_layers=int(need("num_hidden_layers")),
        n_heads=n_heads, n_kv_heads=int(data.get("num_key_value_heads") or n_heads),
        ffn_dim=int(need("intermediate_size")), max_seq_len=int(need("max_position_embeddings")),
        rope_theta=float(theta), norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(data.get("tie_word_embeddings", False)),
        attn_bias=model_type == "qwen2" or bool(data.get("attention_bias", False)),
        mlp_bias=bool(data.get("mlp_bias", False)),
        head_dim=int(head_dim) if head_dim and int(head_dim) != dim // n_heads else None,
        **_sliding_window(data, model_type, int(need("num_hidden_layers")), refuse),
    )


def _sliding_window(data: dict[str, Any], model_type: str, n_layers: int, refuse) -> dict[str, Any]:
    """sliding_window / sliding_window_from of a Mistral or Qwen2 config (Llama has none)."""
    window = data.get("sliding_window")
    if model_type == "llama" or window is None:
        return {}
    if model_type == "qwen2" and not data.get("use_sliding_window", False):
        return {}
    types = data.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        sliding = [i for i, kind in enumerate(types) if kind == "sliding_attention"]
        if not sliding:
            return {}
        if sliding != list(range(sliding[0], n_layers)):
            raise refuse(f"sliding-window layers {sliding} (only the last layers, from one on, are supported)")
        start = sliding[0]
    else:
        start = int(data.get("max_window_layers", 0)) if model_type == "qwen2" else 0
    if start >= n_layers:
        return {}
    return {"sliding_window": int(window), "sliding_window_from": start}


def _rope_theta(data: dict[str, Any], refuse) -> float:
    rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        return float(data.get("rope_theta", 10000.0))
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise refuse(f"rope scaling {rope.get('rope_type', rope.get('type'))!r}")
    return float(data.get("rope_theta", rope.get("rope_theta", 10000.0)))


def _falcon_config(data: dict[str, Any], need, refuse) -> ModelConfig:
    """Falcon's three attention layouts: the new decoder (Falcon-40B/180B: grouped kv heads, usually
    ln_attn + ln_mlp), multi-query (Falcon-7B: one kv head) and one kv head per query head."""
    if data.get("alibi"):
        raise refuse("alibi (Falcon-RW)")
    if data.get("activation", "gelu") != "gelu":
        raise refuse(f"activation {data.get('activation')!r}")
    dim, n_heads = int(need("hidden_size")), int(need("num_attention_heads", "n_head"))
    parallel = bool(data.get("parallel_attn", True))
    norms = 1
    if data.get("new_decoder_architecture"):
        if not parallel:
            raise refuse("new_decoder_architecture without parallel_attn")
        kv_heads = int(data.get("num_kv_heads") or n_heads)
        norms = int(data.get("num_ln_in_parallel_attn") or 2)
    else:
        kv_heads = 1 if data.get("multi_query", True) else n_heads
    bias = bool(data.get("bias", False))
    return ModelConfig(
        family="falcon", vocab_size=int(need("vocab_size")), dim=dim, n_layers=int(need("num_hidden_layers", "n_layer")),
        n_heads=n_heads, n_kv_heads=kv_heads, ffn_dim=int(data.get("ffn_hidden_size") or 4 * dim),
        max_seq_len=int(data.get("max_position_embeddings", 2048)), rope_theta=_rope_theta(data, refuse),
        norm_eps=float(data.get("layer_norm_epsilon", 1e-5)), tie_embeddings=bool(data.get("tie_word_embeddings", True)),
        attn_bias=bias, mlp_bias=bias, parallel_block=parallel, parallel_norms=norms,
    )


def _mpt_config(data: dict[str, Any], need, refuse) -> ModelConfig:
    attn = data.get("attn_config") or {}
    if not isinstance(attn, dict):
        raise refuse("an attn_config that is not an object")
    if not attn.get("alibi", True):
        raise refuse("learned position embeddings (attn_config.alibi false)")
    for option in ("qk_ln", "clip_qkv", "softmax_scale", "prefix_lm"):
        if attn.get(option):
            raise refuse(f"attn_config.{option}")
    if not data.get("no_bias", True):
        raise refuse("biases (no_bias false)")
    dim = int(need("d_model", "hidden_size"))
    return ModelConfig(
        family="mpt", vocab_size=int(need("vocab_size")), dim=dim, n_layers=int(need("n_layers", "num_hidden_layers")),
        n_heads=int(need("n_heads", "num_attention_heads")), ffn_dim=int(data.get("expansion_ratio", 4)) * dim,
        max_seq_len=int(data.get("max_seq_len", 2048)), norm_eps=float(data.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=True, alibi_bias_max=float(attn.get("alibi_bias_max", 8)),
    )


def read_safetensors(folder: Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's *.safetensors files (only the names `keep` accepts, when given)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = f" (found {', '.join(pickled)}: pickled weights are never loaded; convert them to safetensors)" if pickled else ""
        raise FileNotFoundError(f"{folder} has no *.safetensors weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    if keep is not None and not keep(key):
                        continue
                    if key in tensors:
                        raise ValueError(f"{file.name}: tensor {key!r} appears in more than one file")
                    tensors[key] = handle.get_tensor(key)
        except (OSError, RuntimeError) as error:
            raise ValueError(f"{file}: not a readable safetensors file ({error})") from None
        except Exception as error:  # safetensors raises its own SafetensorError for corrupt headers
            if type(error).__name__ == "SafetensorError":
                raise ValueError(f"{file}: corrupt safetensors file ({error})") from None
            raise
    return tensors


def normalise_fused_names(family: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-2 and BLOOM checkpoints may omit the 'transformer.' prefix; GPT-2 stores Conv1D weights
    transposed and old ones carry causal-mask buffers."""
    out = {}
    for key, value in tensors.items():
        if family == "gpt2" and (key.endswith(".attn.bias") or key.endswith(".attn.masked_bias")):
            continue  # old causal-mask buffers, not parameters
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key
        if family == "gpt2" and key.endswith(GPT2_CONV1D):
            value = value.t().contiguous()
        out[key] = value
    return out


# config.json's name for each ModelConfig field a tensor shape depends on.
_HF_FIELDS = {
    "llama": {"vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_hidden_layers",
              "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
              "ffn_dim": "intermediate_size", "max_seq_len": "max_position_embeddings"},
    "gpt2": {"vocab_size": "vocab_size", "dim": "n_embd", "n_layers": "n_layer", "n_heads": "n_head",
             "ffn_dim": "n_inner", "max_seq_len": "n_positions"},
    "falcon": {"vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_hidden_layers",
               "n_heads": "num_attention_heads", "n_kv_heads": "num_kv_heads", "ffn_dim": "ffn_hidden_size",
               "max_seq_len": "max_position_embeddings"},
    "mpt": {"vocab_size": "vocab_size", "dim": "d_model", "n_layers": "n_layers", "n_heads": "n_heads",
            "ffn_dim": "expansion_ratio x d_model", "max_seq_len": "max_seq_len"},
    "bloom": {"vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "n_layer", "n_heads": "n_head",
              "ffn_dim": "4 x hidden_size"},
}
# Which fields each tensor's shape comes from, by the end of its name.
_SHAPE_SOURCES = (
    (("embed_tokens.weight", "wte.weight", "lm_head.weight"), ("vocab_size", "dim")),
    (("wpe.weight",), ("max_seq_len", "dim")),
    (("q_proj.weight", "q_proj.bias", "o_proj.weight"), ("n_heads", "head_dim", "dim")),
    (("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"), ("n_kv_heads", "head_dim", "dim")),
    (("q_norm.weight", "k_norm.weight"), ("head_dim",)),
    (("query_key_value.weight", "query_key_value.bias", "Wqkv.weight"), ("n_heads", "n_kv_heads", "head_dim", "dim")),
    (("gate_proj.weight", "up_proj.weight", "down_proj.weight", "c_fc.weight", "c_fc.bias", "mlp.c_proj.weight",
      "gate_proj.bias", "up_proj.bias", "dense_h_to_4h.weight", "dense_h_to_4h.bias", "dense_4h_to_h.weight"),
     ("ffn_dim", "dim")),
)


def check_config_against_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor], where: str,
                                  hf_names: bool = True) -> None:
    """Refuse a config.json that contradicts the safetensors shapes, naming the field, before the
    model is built (the layer count and context length are checked before even a meta-device build)."""
    names = _HF_FIELDS[config.family] if hf_names else {}

    def field(attr: str) -> str:
        value = config.head_size if attr == "head_dim" else config.kv_heads if attr == "n_kv_heads" else getattr(config, attr)
        return f"{names.get(attr, attr)}={value}"

    prefix = "model.layers." if config.family == "llama" else f"transformer.{FUSED_NAMES[config.family].layers}."
    layers = {int(k[len(prefix):].split(".", 1)[0]) for k in tensors
              if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    if len(layers) != config.n_layers or max(layers, default=-1) != config.n_layers - 1:
        held = f"layers {min(layers)} to {max(layers)} ({len(layers)} layers)" if layers else "no layers"
        raise ValueError(f"{where}: {field('n_layers')} but the safetensors hold {held}")
    weights = sum(t.numel() for t in tensors.values())
    if config.rotary and context_too_long(config.max_seq_len, config.head_size, weights):
        raise ValueError(f"{where}: {field('max_seq_len')} is absurd for this model: its rotary tables "
                         f"({config.max_seq_len} x head size {config.head_size}) would outgrow its {weights} weights")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(config).state_dict().items()}
    for key, value in tensors.items():
        shape = expected.get(key)
        if shape is None or tuple(value.shape) == shape:
            continue  # unknown names are reported by Transformer.from_state_dict
        sources = next((attrs for ends, attrs in _SHAPE_SOURCES if key.endswith(ends)), ("dim",))
        raise ValueError(f"{where}: tensor {key} has shape {list(value.shape)}, but "
                         f"{', '.join(field(a) for a in sources)} give {list(shape)}")


def load_pretrained(folder: str | os.PathLike, dtype: torch.dtype | None = torch.float32,
                    device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer | None]:
    """Load a Hugging Face (or lmforge checkpoint) folder: model in `dtype`, tokenizer if present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    raw = read_config(folder)
    if is_sequence_classifier(raw):
        raise ValueError(f"{folder} holds a sequence classifier (a reward model), not a language model; "
                         "load it with lmforge.io.hf.load_sequence_classifier (or `lmforge rm score`)")
    config = config_from_hf(raw, str(folder / "config.json"))
    tensors = read_safetensors(folder)
    if config.family != "llama":
        tensors = normalise_fused_names(config.family, tensors)
    check_config_against_tensors(config, tensors, str(folder / "config.json"), "lmforge_config" not in raw)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    model = Transformer.from_state_dict(config, tensors, device=device)
    tokenizer = Tokenizer.from_folder(folder) if (folder / "tokenizer.json").is_file() else None
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def hf_config(config: ModelConfig, tokenizer: Tokenizer | None = None, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The Hugging Face config.json for a model (plus our lossless copy under lmforge_config)."""
    dtype_name = str(dtype).removeprefix("torch.")
    special: dict[str, Any] = {}
    if tokenizer is not None:
        eos = sorted(tokenizer.eos_ids)
        special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
                   "pad_token_id": tokenizer.pad_id}
    if config.family == "gpt2":
        data = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_embd": config.dim, "n_layer": config.n_layers, "n_head": config.n_heads, "n_inner": config.hidden_dim,
            "n_positions": config.max_seq_len, "n_ctx": config.max_seq_len, "layer_norm_epsilon": config.norm_eps,
            "activation_function": "gelu_new", "tie_word_embeddings": config.tie_embeddings,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        }
    elif config.family == "falcon":
        new_decoder = config.parallel_norms == 2 or config.kv_heads not in (1, config.n_heads)
        data = {
            "architectures": ["FalconForCausalLM"], "model_type": "falcon", "vocab_size": config.vocab_size,
            "hidden_size": config.dim, "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
            "num_kv_heads": config.kv_heads, "new_decoder_architecture": new_decoder,
            "multi_query": config.kv_heads == 1, "parallel_attn": config.parallel_block,
            "num_ln_in_parallel_attn": config.parallel_norms if new_decoder else None, "bias": config.attn_bias,
            "ffn_hidden_size": config.hidden_dim, "activation": "gelu", "alibi": False,
            "max_position_embeddings": config.max_seq_len, "rope_theta": config.rope_theta,
            "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
            "hidden_dropout": 0.0, "attention_dropout": 0.0,
        }
    elif config.family == "mpt":
        data = {
            "architectures": ["MptForCausalLM"], "model_type": "mpt", "vocab_size": config.vocab_size,
            "d_model": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads,
            "expansion_ratio": config.hidden_dim // config.dim, "max_seq_len": config.max_seq_len,
            "layer_norm_epsilon": config.norm_eps, "no_bias": True, "tie_word_embeddings": True,
            # transformers' MptAttentionConfig types alibi_bias_max as an int
            "attn_config": {"alibi": True, "alibi_bias_max": int(config.alibi_bias_max)
                            if float(config.alibi_bias_max).is_integer() else config.alibi_bias_max},
        }
    elif config.family == "bloom":
        data = {
            "architectures": ["BloomForCausalLM"], "model_type": "bloom", "vocab_size": config.vocab_size,
            "hidden_size": config.dim, "n_layer": config.n_layers, "n_head": config.n_heads,
            "layer_norm_epsilon": config.norm_eps, "seq_length": config.max_seq_len,
            "apply_residual_connection_post_layernorm": False, "hidden_dropout": 0.0, "attention_dropout": 0.0,
            "tie_word_embeddings": config.tie_embeddings,
        }
    else:
        data = _llama_family_config(config)
    data.update(special)
    data["torch_dtype"] = dtype_name
    data["lmforge_config"] = config.to_dict()
    return data


def _llama_family_config(config: ModelConfig) -> dict[str, Any]:
    """Llama, or Qwen2 (q/k/v biases), or Mistral (a sliding window on every layer)."""
    if config.attn_bias:
        architecture, model_type = "Qwen2ForCausalLM", "qwen2"
    elif config.sliding_window is not None:
        architecture, model_type = "MistralForCausalLM", "mistral"
    else:
        architecture, model_type = "LlamaForCausalLM", "llama"
    data = {
        "architectures": [architecture], "model_type": model_type,
        "vocab_size": config.vocab_size, "hidden_size": config.dim, "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads, "head_dim": config.head_size, "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": config.attn_bias, "mlp_bias": config.mlp_bias,
    }
    if model_type == "mistral":
        data["sliding_window"] = config.sliding_window
    if model_type == "qwen2":
        data.update(use_sliding_window=config.sliding_window is not None, sliding_window=config.sliding_window,
                    max_window_layers=config.sliding_window_from if config.sliding_window is not None else config.n_layers)
    return data


def hf_incompatibilities(config: ModelConfig) -> list[str]:
    """Options that Hugging Face's own classes would silently ignore (export must refuse them)."""
    problems = []
    if config.qk_norm:
        problems.append("qk_norm")
    if config.logit_softcap is not None:
        problems.append("logit_softcap")
    if config.family == "llama" and config.attn_bias and config.mlp_bias:
        problems.append("mlp_bias together with attn_bias")
    if config.family == "llama" and config.sliding_window is not None and not config.attn_bias:
        if config.sliding_window_from:
            problems.append("sliding_window_from without q/k/v biases (Mistral slides on every layer)")
        if config.mlp_bias:
            problems.append("mlp_bias together with sliding_window (Mistral has no MLP biases)")
    if config.family in ("mpt", "bloom") and config.hidden_dim != 4 * config.dim:
        problems.append(f"{config.family} with an MLP width other than 4 x dim")
    if config.family == "mpt" and not config.tie_embeddings:
        problems.append("mpt with an untied output head")
    if config.family == "falcon":
        if config.attn_bias != config.mlp_bias:
            problems.append("falcon with attn_bias differing from mlp_bias (Falcon has one bias flag)")
        if not config.parallel_block and config.kv_heads not in (1, config.n_heads):
            problems.append("falcon with grouped kv heads in sequential blocks")
    if config.family != "llama" and config.sliding_window is not None:
        problems.append(f"{config.family} with sliding_window")
    return problems


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Weights under Hugging Face names and layouts, tied copies dropped, contiguous for safetensors."""
    out = {}
    for key, value in model.state_dict().items():
        if model.config.tie_embeddings and key == "lm_head.weight":
            continue
        if model.config.family == "gpt2" and key.endswith(GPT2_CONV1D):
            value = value.t()
        out[key] = value.detach().contiguous().cpu()
    return out


def save_pretrained(model: Transformer, tokenizer: Tokenizer | None, folder: str | os.PathLike) -> None:
    """Write config.json, model.safetensors and the tokenizer into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = model.lm_head.weight.dtype
    (folder / "config.json").write_text(json.dumps(hf_config(model.config, tokenizer, dtype), indent=2) + "\n")
    save_file(hf_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(folder)
        generation = {"bos_token_id": tokenizer.bos_id, "eos_token_id": sorted(tokenizer.eos_ids)}
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Sequence classifiers (reward models): Hugging Face's ...ForSequenceClassification layout
# --------------------------------------------------------------------------------------------
def is_sequence_classifier(raw_config: dict[str, Any]) -> bool:
    architectures = raw_config.get("architectures") or []
    return isinstance(architectures, list) and any(str(a).endswith("ForSequenceClassification") for a in architectures)


def save_sequence_classifier(model: ScalarHeadModel, tokenizer: Tokenizer | None, folder: str | os.PathLike,
                             pad_id: int | None) -> None:
    """Write a scalar-head model as `LlamaForSequenceClassification` (or Qwen2/GPT2): the backbone
    under its own names, the head as `score.weight`, `num_labels` 1, `pad_token_id` = `pad_id`
    (where the score is read: the last token that is not `pad_id`). No `lm_head`: the classifier
    layout has none."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = model.base
    dtype = base.embedding.weight.dtype
    data = hf_config(base.config, tokenizer, dtype)
    data["architectures"] = [data["architectures"][0].replace("ForCausalLM", "ForSequenceClassification")
                             .replace("LMHeadModel", "ForSequenceClassification")]
    data["id2label"], data["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    data["pad_token_id"] = pad_id
    tensors = {k: v for k, v in hf_state_dict(base).items() if k != "lm_head.weight"}
    tensors[f"{SCORE_NAME}.weight"] = model.score.weight.detach().to(dtype).contiguous().cpu()
    (folder / "config.json").write_text(json.dumps(data, indent=2) + "\n")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(folder)


def load_sequence_classifier(folder: str | os.PathLike, dtype: torch.dtype | None = torch.float32,
                             device: str | torch.device = "cpu") -> tuple[ScalarHeadModel, Tokenizer | None, int | None]:
    """(model, tokenizer or None, pad id) from a one-label sequence-classification folder, ours or
    Hugging Face's. An untied family's output head is not part of the layout; it is left at zero."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    raw = read_config(folder)
    where = str(folder / "config.json")
    if not is_sequence_classifier(raw):
        raise ValueError(f"{where}: not a sequence classifier (architectures {raw.get('architectures')!r})")
    labels = raw.get("id2label")
    if raw.get("num_labels", 1) != 1 or (isinstance(labels, dict) and len(labels) != 1):
        raise ValueError(f"{where}: a reward model has one label (num_labels 1), this one has {len(labels or {})}")
    config = config_from_hf(raw, where)
    tensors = read_safetensors(folder)
    if config.family != "llama":
        tensors = normalise_fused_names(config.family, tensors)  # prefixes 'transformer.' to every name, score included
        tensors = {k.removeprefix("transformer.") if k.endswith(f"{SCORE_NAME}.weight") else k: v for k, v in tensors.items()}
    score = tensors.pop(f"{SCORE_NAME}.weight", None)
    if score is None or tuple(score.shape) != (1, config.dim):
        found = None if score is None else list(score.shape)
        raise ValueError(f"{folder}: needs a {SCORE_NAME}.weight of shape [1, {config.dim}], found {found}")
    if not config.tie_embeddings and "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = torch.zeros(config.vocab_size, config.dim, dtype=score.dtype)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
        score = score.to(dtype)
    base = Transformer.from_state_dict(config, tensors, device=device)
    head = torch.nn.Linear(config.dim, 1, bias=False, device=device, dtype=score.dtype)
    with torch.no_grad():
        head.weight.copy_(score)
    tokenizer = Tokenizer.from_folder(folder) if (folder / "tokenizer.json").is_file() else None
    pad = raw.get("pad_token_id")
    return ScalarHeadModel(base, head).eval(), tokenizer, int(pad) if isinstance(pad, int) else None
