"""Our GGUF loader against Hugging Face transformers loading the same file."""

from __future__ import annotations

import time

import pytest
import torch

from lmforge.infer import Engine, SamplingParams
from lmforge.io.gguf import load_gguf, unpermute_rows

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a land far away, there lived",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. 東京は日本の首都です。",
    "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n",
]


def test_config_and_tokenizer_come_from_metadata(smollm):
    model, tokenizer = smollm
    c = model.config
    assert (c.family, c.dim, c.n_layers, c.n_heads, c.kv_heads, c.hidden_dim) == ("llama", 576, 30, 9, 3, 1536)
    assert c.rope_theta == 100000.0 and c.max_seq_len == 8192 and c.tie_embeddings
    assert tokenizer.vocab_size == 49152 and tokenizer.chat_template.startswith("{% for message in messages %}")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(smollm, hf_smollm, prompt):
    model, tokenizer = smollm
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        ours = model(ids)
        theirs = hf_smollm(ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-3


def test_greedy_64_tokens_identical_to_transformers(smollm, hf_smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=3)
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[1]]
    # Both sides stop on token 2 (<|im_end|>, the GGUF's eos), as transformers' generate does.
    params = SamplingParams(max_new_tokens=64, stop_token_ids=frozenset({2}))
    ours = engine.generate([tokenizer.encode(p) for p in prompts], params)
    full_length = 0
    for prompt, completion in zip(prompts, ours):
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            out = hf_smollm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                                     pad_token_id=2)
        theirs = out[0, ids.shape[1]:].tolist()
        if completion.finish_reason == "stop":
            assert theirs[-1] == 2
            theirs = theirs[:-1]
        assert completion.token_ids == theirs
        full_length += len(theirs) == 64
    assert full_length >= 1  # at least one prompt really runs the whole 64 tokens


def test_unpermute_inverts_llama_cpp_permutation():
    n_heads, head, cols = 3, 8, 5
    w = torch.randn(n_heads * head, cols)
    # llama.cpp's converter: interleave the two rotary halves of each head
    permuted = w.reshape(n_heads, 2, head // 2, cols).transpose(1, 2).reshape(w.shape)
    assert torch.equal(unpermute_rows(permuted, n_heads), w)


def test_load_is_fast_and_bf16_works(smollm_gguf):
    start = time.perf_counter()
    contents = load_gguf(smollm_gguf, dtype=torch.bfloat16)
    assert time.perf_counter() - start < 30
    assert all(t.dtype == torch.bfloat16 for t in contents.state_dict.values())
    assert contents.metadata["general.architecture"] == "llama"
