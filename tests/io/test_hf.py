"""Hugging Face folders: read theirs, write ours, and compare logits with transformers."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.io.hf import hf_incompatibilities, load_pretrained, save_pretrained
from lmforge.model import Transformer, init_weights
from lmforge.core.config import ModelConfig

from transformers import (  # noqa: E402
    AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
    MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
)


def _hf_models():
    common = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return {
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=211, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                           resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)),
        "llama": LlamaForCausalLM(LlamaConfig(rope_theta=5000.0, tie_word_embeddings=False, **common)),
        "mistral": MistralForCausalLM(MistralConfig(**common, sliding_window=None)),
        "qwen2": Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common)),
    }


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mistral", "qwen2"])
def test_hf_folder_loads_with_matching_logits(tmp_path, kind):
    torch.manual_seed(0)
    reference = _hf_models()[kind].eval()
    with torch.no_grad():  # random biases so that bias handling is exercised too
        for name, p in reference.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    reference.save_pretrained(tmp_path)
    model, tokenizer = load_pretrained(tmp_path)
    assert tokenizer is None
    ids = torch.randint(0, 211, (2, 17))
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_our_folder_loads_in_transformers(tmp_path, family):
    config = ModelConfig(family=family, vocab_size=150, dim=64, n_layers=2, n_heads=4,
                         n_kv_heads=2 if family == "llama" else None, max_seq_len=64, tie_embeddings=family == "gpt2")
    model = Transformer(config)
    init_weights(model, seed=1)
    save_pretrained(model, None, tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, 150, (2, 12))
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() < 1e-4
    again, _ = load_pretrained(tmp_path)
    assert again.config == config
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def test_refuses_pickles_and_reports_bad_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="hidden_size"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pretrained(tmp_path)


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    config = ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, max_seq_len=16)
    save_pretrained(Transformer(config), None, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="safetensors"):
        load_pretrained(tmp_path)


def test_pickled_only_folder_is_refused(tmp_path):
    config = ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, max_seq_len=16)
    save_pretrained(Transformer(config), None, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="pickled weights are never loaded"):
        load_pretrained(tmp_path)


def test_incompatibilities_are_named():
    assert hf_incompatibilities(ModelConfig(qk_norm=True, logit_softcap=30.0)) == ["qk_norm", "logit_softcap"]
    assert hf_incompatibilities(ModelConfig()) == []
