"""GGUF export: files reopen in our loader and in `transformers` (gguf_file=) with matching logits."""

from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.io.gguf import load_gguf, load_gguf_model, unpermute_rows
from lmforge.io.gguf_writer import infer_pre_tokenizer, permute_rows, save_gguf, tokenizer_metadata
from lmforge.model.lora import apply_lora
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.tokenizer import Tokenizer

TEXT = "The year 2024 had 366 days; we can't count them all. <|im_start|>user\nWhat is 12345 + 7?<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A small byte-level BPE with ChatML special tokens and template (fast to export and reload)."""
    from lmforge.data.synthetic import make_items
    from lmforge.tokenizer.train import train_bpe

    docs = [f"{i.question} {i.answer}" for task in ("add", "reverse", "convert") for i in make_items(task, 100)]
    return train_bpe(docs + ["The year 2024 had 366 days; we can't count them all. 12 + 30 = 42."] * 20, vocab_size=512)


def tiny(vocab_size: int, **changes) -> Transformer:
    config = ModelConfig(family="llama", vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=176, max_seq_len=128, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True)
    model = Transformer(config.replace(**changes))
    init_weights(model, seed=0)
    with torch.no_grad():  # non-trivial norm weights, so a misplaced norm would show
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(torch.randn(param.shape) * 0.1)
    return model.eval()


def reference(model: Transformer, qtype: str) -> Transformer:
    """The model with exactly the rounding the file applies: 2-D weights to f16 or q8_0, the rest f32."""
    state = {}
    for key, value in model.state_dict().items():
        if value.ndim == 2:
            array = value.numpy().astype(np.float32)
            if qtype == "q8_0" and array.shape[-1] % 32 == 0:
                kind = gguf.GGMLQuantizationType.Q8_0
                array = gguf.quants.dequantize(gguf.quants.quantize(array, kind), kind).reshape(array.shape)
            else:
                array = array.astype(np.float16).astype(np.float32)
            value = torch.from_numpy(np.ascontiguousarray(array))
        state[key] = value
    return Transformer.from_state_dict(model.config, state).eval()


def same_config(loaded: ModelConfig, original: ModelConfig) -> bool:
    """Equal, with GGUF's float32 epsilon read back as float64."""
    return loaded.norm_eps == pytest.approx(original.norm_eps, rel=1e-6) and \
        loaded.replace(norm_eps=original.norm_eps) == original


def hf_logits(path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits


def test_permute_rows_inverts_the_readers_unpermute():
    weight = torch.arange(24 * 5, dtype=torch.float32).reshape(24, 5)
    assert torch.equal(unpermute_rows(permute_rows(weight, 3), 3), weight)
    assert not torch.equal(permute_rows(weight, 3), weight)
    bias = torch.arange(16.0)
    assert torch.equal(unpermute_rows(permute_rows(bias, 2), 2), bias)


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_export_reopens_in_our_loader_and_in_transformers(tmp_path, tokenizer, qtype):
    model = tiny(tokenizer.vocab_size)
    path = save_gguf(model, tokenizer, tmp_path / f"tiny-{qtype}.gguf", qtype=qtype)
    ids = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        original = model(ids)
        expected = reference(model, qtype)(ids)

    loaded, loaded_tokenizer = load_gguf_model(path)
    assert same_config(loaded.config, model.config)
    with torch.no_grad():
        ours = loaded(ids)
    # Exactly the file's rounding and nothing else (names, Q/K order, norms, metadata all right).
    torch.testing.assert_close(ours, expected, atol=1e-3, rtol=0)
    # Within the quantization tolerance of the float32 original.
    tolerance = {"f16": 2e-3, "q8_0": 2e-2}[qtype] * float(original.abs().max())
    assert float((ours - original).abs().max()) < tolerance
    assert float((ours - original).abs().max()) > 0  # the rounding really happened (the test can tell)
    # transformers, an independent reader, computes the same logits from the file.
    torch.testing.assert_close(hf_logits(path, ids), ours, atol=1e-3, rtol=0)

    # The tokenizer and chat template come back too.
    assert loaded_tokenizer.encode(TEXT) == tokenizer.encode(TEXT)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert (loaded_tokenizer.bos_id, loaded_tokenizer.eos_id, loaded_tokenizer.pad_id) == \
           (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    contents = load_gguf(path)
    assert contents.metadata["tokenizer.ggml.pre"] == "gpt-2"
    assert contents.metadata["general.file_type"] == {"f16": 1, "q8_0": 7}[qtype]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == {"f16": "F16", "q8_0": "Q8_0"}[qtype]
    assert types["blk.0.ffn_down.weight"] == "F16"  # 176-wide rows do not split into 32-value q8_0 blocks


def test_untied_qwen2_and_padded_vocabulary_round_trip(tmp_path, tokenizer):
    model = tiny(tokenizer.vocab_size + 64, tie_embeddings=False, attn_bias=True)  # qwen2-style, extra embedding rows
    path = save_gguf(model, tokenizer, tmp_path / "qwen.gguf", qtype="f32")
    loaded, _ = load_gguf_model(path)
    assert same_config(loaded.config, model.config)
    ids = torch.tensor([tokenizer.encode(TEXT) + [tokenizer.vocab_size + 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=1e-5, rtol=0)
    meta = load_gguf(path).metadata
    assert meta["general.architecture"] == "qwen2"
    tokens = gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == model.config.vocab_size and tokens[-1] == f"[PAD{model.config.vocab_size - 1}]"


def test_gpt2_family_round_trips(tmp_path, tokenizer):
    config = ModelConfig(family="gpt2", vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=128,
                         attn_bias=True, mlp_bias=True)
    model = Transformer(config)
    init_weights(model, seed=1)
    model.eval()
    path = save_gguf(model, tokenizer, tmp_path / "gpt2.gguf", qtype="f32")
    loaded, _ = load_gguf_model(path)
    ids = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=1e-5, rtol=0)


def test_refusals_are_clear(tmp_path, tokenizer):
    model = tiny(tokenizer.vocab_size)
    apply_lora(model, ["q_proj"], rank=2, alpha=4.0)
    with pytest.raises(ValueError, match="merged first"):
        save_gguf(model, tokenizer, tmp_path / "lora.gguf")
    with pytest.raises(ValueError, match="qk_norm"):
        save_gguf(tiny(tokenizer.vocab_size, qk_norm=True), tokenizer, tmp_path / "qk.gguf")
    with pytest.raises(ValueError, match="f16, q8_0|q4"):
        save_gguf(tiny(tokenizer.vocab_size), tokenizer, tmp_path / "q4.gguf", qtype="q4_0")
    with pytest.raises(ValueError, match="embeddings"):
        save_gguf(tiny(tokenizer.vocab_size - 12), tokenizer, tmp_path / "small.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_pre_tokenizer_is_found_by_round_trip(tokenizer):
    meta = tokenizer_metadata(tokenizer, tokenizer.vocab_size, "gpt-2")
    assert infer_pre_tokenizer(tokenizer, meta) == "gpt-2"  # trained with GPT-2's splitting
    text = "naïve café\n\n\nx=1234567;y+=89 It'S"
    # Over the same vocabulary, a digit-by-digit splitter (SmolLM) and a Llama-3 one encode differently,
    # and each is recognised as itself.
    for pre, wrong in (("smollm", "gpt-2"), ("llama-bpe", "gpt-2")):
        other = Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.pre": pre})
        assert other.encode(text) != tokenizer.encode(text)
        found = infer_pre_tokenizer(other, meta)
        assert found != wrong
        rebuilt = Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.pre": found})
        assert rebuilt.encode(text) == other.encode(text)
    # A splitter none of the candidates reproduces is refused rather than guessed.
    with pytest.raises(ValueError, match="no llama.cpp pre-tokenizer"):
        infer_pre_tokenizer(other, meta, candidates=("gpt-2", "smollm"))


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_smollm_export_reopens_in_both_loaders(tmp_path, smollm, qtype):
    model, tokenizer = smollm
    path = save_gguf(model, tokenizer, tmp_path / f"smollm-{qtype}.gguf", qtype=qtype)
    assert load_gguf(path).metadata["tokenizer.ggml.pre"] == "smollm"
    assert load_gguf_model(path)[1].chat_template == tokenizer.chat_template
    ids = torch.tensor([tokenizer.encode("The capital of France is Paris. 12 + 30 = 42, said the assistant.")])
    loaded, _ = load_gguf_model(path)
    with torch.no_grad():
        ours = loaded(ids)
        expected = reference(model, qtype)(ids)
        original = model(ids)
    torch.testing.assert_close(ours, expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(hf_logits(path, ids), ours, atol=1e-3, rtol=0)
    agreement = (ours.argmax(-1) == original.argmax(-1)).float().mean()
    assert agreement >= {"f16": 1.0, "q8_0": 0.9}[qtype]
