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


@pytest.mark.parametrize(
    ("kind", "changes", "match"),
    [
        ("llama", {"num_hidden_layers": 3}, r"num_hidden_layers=3 but the safetensors hold layers 0 to 1 \(2 layers\)"),
        ("llama", {"num_hidden_layers": 10**9}, "num_hidden_layers=1000000000 but"),
        ("llama", {"hidden_size": 128}, r"has shape \[211, 64\], but vocab_size=211, hidden_size=128 give \[211, 128\]"),
        ("llama", {"vocab_size": 300}, r"has shape \[211, 64\], but vocab_size=300, hidden_size=64 give \[300, 64\]"),
        ("llama", {"num_key_value_heads": 4}, r"k_proj.weight has shape \[32, 64\], but num_key_value_heads=4, head_dim=16"),
        ("llama", {"num_attention_heads": 2, "head_dim": 16}, r"o_proj.weight has shape \[64, 64\], but num_attention_heads=2, head_dim=16, hidden_size=64 give \[64, 32\]"),
        ("llama", {"intermediate_size": 128}, r"down_proj.weight has shape \[64, 96\], but intermediate_size=128, hidden_size=64 give \[64, 128\]"),
        ("llama", {"max_position_embeddings": 2**40}, "max_position_embeddings=1099511627776 is absurd for this model"),
        ("gpt2", {"n_positions": 64}, r"wpe.weight has shape \[128, 64\], but n_positions=64, n_embd=64 give \[64, 64\]"),
        ("gpt2", {"n_layer": 1}, "n_layer=1 but the safetensors hold layers 0 to 1"),
    ],
)
def test_config_contradicting_tensors_is_refused_before_building(tmp_path, monkeypatch, kind, changes, match):
    _hf_models()[kind].save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))

    def built(*args, **kwargs):
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(Transformer, "from_state_dict", built)
    with pytest.raises(ValueError, match=match) as info:
        load_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


def test_lmforge_config_contradicting_tensors_names_our_field(tmp_path):
    config = ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, max_seq_len=16, qk_norm=True)
    save_pretrained(Transformer(config), None, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["lmforge_config"]["ffn_dim"] = 64
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"down_proj.weight has shape \[32, 256\], but ffn_dim=64, dim=32 give \[32, 64\]"):
        load_pretrained(tmp_path)


def test_export_carries_generation_config_and_chat_template_for_transformers_and_vllm(tmp_path, smollm):
    """What vLLM reads from an exported folder (generation_config.json, the tokenizer's chat
    template) loads in transformers and renders the same prompt as lmforge."""
    from transformers import AutoTokenizer, GenerationConfig

    from lmforge.tokenizer.chat import render_conversation

    model, tokenizer = smollm
    save_pretrained(model, tokenizer, tmp_path)
    generation = GenerationConfig.from_pretrained(tmp_path)
    assert generation.bos_token_id == tokenizer.bos_id
    assert sorted(generation.eos_token_id) == sorted(tokenizer.eos_ids)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Paris?"},
                    {"role": "assistant", "content": "In France."}, {"role": "user", "content": "And Rome?"}]
    text = theirs.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    ours, _ = render_conversation(tokenizer, conversation, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "And Rome?" in text
    assert theirs(text, add_special_tokens=False)["input_ids"] == ours
