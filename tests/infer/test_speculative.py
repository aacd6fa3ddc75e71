"""Speculative decoding gives exactly the tokens of plain decoding; prompt lookup drafts as specified."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer import Engine, SamplingParams
from lmforge.infer.speculative import DraftModel, PromptLookup
from lmforge.model.quant import quantize_model

PROMPTS = [  # repeats its input (code, a list, a quotation), plain prose, another script, a chat turn
    "def area(width, height):\n    return width * height\n\n# the same function with type hints:\ndef area(",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. Monday, Tuesday,",
    "Once upon a time, in a land far away, there lived",
    "東京は日本の首都です。東京は",
    "<|im_start|>user\nRepeat exactly: the cat sat on the mat.<|im_end|>\n<|im_start|>assistant\n",
]


def test_prompt_lookup_continues_the_latest_earlier_occurrence():
    lookup = PromptLookup(num_draft=3, max_ngram=2, min_ngram=1)
    tokens = [5, 6, 7, 8, 9, 5, 6, 1, 2, 5, 6]
    assert lookup.propose(0, tokens, limit=10) == [1, 2, 5]  # "5 6" last seen before the end at index 5
    assert lookup.propose(0, tokens + [1], limit=2) == [2, 5]  # incremental: "6 1" -> 2, 5
    assert lookup.propose(0, [4, 4, 4], limit=10) == [4, 4, 4]  # a new text: the index starts over; period 1
    assert lookup.propose(2, [7, 1, 2, 1, 2], limit=10) == [1, 2, 1]  # "1 2" runs into the present: period 2
    assert lookup.propose(1, [1, 2, 3], limit=10) == []  # nothing repeats
    assert lookup.propose(1, [1, 2, 3, 1], limit=0) == []
    with pytest.raises(ValueError, match="min_ngram <= max_ngram"):
        PromptLookup(max_ngram=1, min_ngram=2)


def generate_both(model, tokenizer, speculative, params, prompts=PROMPTS, batch=1):
    plain = Engine(model, tokenizer, max_batch_size=batch)
    drafted = Engine(model, tokenizer, max_batch_size=batch, speculative=speculative)
    return plain.generate(prompts, params), drafted.generate(prompts, params), drafted


@pytest.mark.parametrize("batch", [1, 3])
def test_prompt_lookup_greedy_equals_plain_greedy(smollm_int4, batch):
    model, tokenizer = smollm_int4
    params = SamplingParams(max_new_tokens=40)
    plain, drafted, engine = generate_both(model, tokenizer, PromptLookup(num_draft=4), params, batch=batch)
    for a, b in zip(plain, drafted):
        assert b.token_ids == a.token_ids and b.text == a.text and b.finish_reason == a.finish_reason
    stats = engine.speculation
    assert stats.proposed > 20 and 0 < stats.accepted <= stats.proposed  # drafts really ran, and some held
    assert stats.tokens_per_call > 1


def test_speculation_keeps_seeded_sampling_stop_strings_and_logprobs(smollm_int4):
    model, tokenizer = smollm_int4
    params = SamplingParams(max_new_tokens=30, temperature=0.8, top_p=0.95, seed=7, stop=("Sunday",), logprobs=2)
    plain, drafted, _ = generate_both(model, tokenizer, PromptLookup(num_draft=3), params, prompts=PROMPTS[:3])
    for a, b in zip(plain, drafted):
        assert b.token_ids == a.token_ids and b.text == a.text and b.finish_reason == a.finish_reason
        assert [(p.token_id, p.logprob) for p in b.logprobs] == [(p.token_id, p.logprob) for p in a.logprobs]


def test_draft_model_greedy_equals_plain_greedy(smollm, smollm_int4):
    model, tokenizer = smollm_int4
    draft = DraftModel(quantize_model(smollm[0], "int4"), num_draft=3, max_rows=2)  # 4-bit from the float weights
    params = SamplingParams(max_new_tokens=24)
    plain, drafted, engine = generate_both(model, tokenizer, draft, params, prompts=PROMPTS[:4], batch=2)
    for a, b in zip(plain, drafted):
        assert b.token_ids == a.token_ids
    assert engine.speculation.acceptance_rate > 0.5  # a near copy of the model drafts well


def test_draft_model_needs_the_same_vocabulary(smollm_int4):
    from lmforge.core.config import ModelConfig
    from lmforge.model.transformer import Transformer

    other = Transformer(ModelConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    with pytest.raises(ValueError, match="must share the tokenizer"):
        Engine(*smollm_int4, speculative=DraftModel(other))


def test_verifying_drafts_computes_what_single_steps_compute(smollm_int4):
    """The decode step on T tokens at once is bit-identical, row by row, to T single-token steps."""
    model, tokenizer = smollm_int4
    ids = torch.tensor([tokenizer.encode(PROMPTS[1])])
    n = ids.shape[1]
    with torch.inference_mode():
        one, many = model.new_cache(1, 128), model.new_cache(1, 128)
        model(ids[:, :-4], cache=one, starts=[0])
        model(ids[:, :-4], cache=many, starts=[0])
        singles = [model.decode_step(ids[:, j:j + 1], torch.tensor([[j]]), one, 128)[0, 0] for j in range(n - 4, n)]
        together = model.decode_step(ids[:, -4:], torch.arange(n - 4, n)[None], many, 128)[0]
    assert all(torch.equal(a, b) for a, b in zip(singles, together))


def test_compiled_verification_equals_compiled_plain_decoding(smollm):
    """Under torch.compile the drafts go through a graph of their own (T > 1); its tokens are still
    those of the single-token graph. A small random model, whose greedy output loops, drafts well.
    Compiled with `compile="max"` (weights frozen into the graphs, inductor's own int4 kernels)."""
    from lmforge.core.config import ModelConfig
    from lmforge.model.transformer import Transformer, init_weights

    tokenizer = smollm[1]
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                         max_seq_len=512)
    model = Transformer(config)
    init_weights(model, seed=0)
    model = quantize_model(model.eval(), "int4")
    prompts = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], list(range(100, 140)), [9] * 12]
    params = SamplingParams(max_new_tokens=60, ignore_eos=True)
    plain = Engine(model, tokenizer, max_batch_size=3, compile="max").generate(prompts, params)
    engine = Engine(model, tokenizer, max_batch_size=3, compile="max", speculative=PromptLookup(num_draft=4))
    drafted = engine.generate(prompts, params)
    assert engine.compile and engine.frozen and engine.speculation.accepted > 50
    assert [c.token_ids for c in drafted] == [c.token_ids for c in plain]
