"""The KV-cache engine against naive recomputation, plus sampling, stopping and streaming rules."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer import Engine, SamplingParams
from lmforge.infer.engine import _stop_prefix_overlap


def naive_greedy(model, prompt_ids: list[int], n: int, stop_ids=frozenset()) -> list[int]:
    """Recompute the whole sequence for every new token: no cache, no batching."""
    ids = list(prompt_ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            if token in stop_ids:
                break
            out.append(token)
            ids.append(token)
    return out


def test_batched_greedy_equals_naive_recomputation(smollm):
    model, tokenizer = smollm
    prompts = ["Hi", "The three primary colours are", "def add(a, b):\n    return", "In 1492, Columbus sailed the ocean"]
    engine = Engine(model, tokenizer, max_batch_size=4)
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    completions = engine.generate(prompts, params)
    for prompt, completion in zip(prompts, completions):
        expected = naive_greedy(model, tokenizer.encode(prompt), 24)
        assert completion.token_ids == expected
        assert completion.finish_reason == "length"
        assert completion.text == tokenizer.decode(expected)


def test_batched_prefill_splits_into_groups_and_joins_running_rows(smollm):
    """Prefill groups bounded by PREFILL_TOKENS, and sequences admitted while others decode,
    give the tokens each prompt gets alone."""
    model, tokenizer = smollm
    prompts = ["Hi", "The three primary colours are", "def add(a, b):\n    return", "In 1492, Columbus sailed the ocean"]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    alone = [Engine(model, tokenizer, max_batch_size=1).generate([p], params)[0].token_ids for p in prompts]
    engine = Engine(model, tokenizer, max_batch_size=4)
    engine.PREFILL_TOKENS = 16  # forces several prefill calls: at most 16 padded tokens each
    assert [c.token_ids for c in engine.generate(prompts, params)] == alone
    engine = Engine(model, tokenizer, max_batch_size=4)
    first = engine.add(prompts[0], params)
    engine.step()
    engine.step()
    later = engine.admit([engine.prepare(p, params) for p in prompts[1:]])  # join a running batch
    with pytest.raises(RuntimeError, match="full"):
        engine.admit([engine.prepare("x", params)])
    with pytest.raises(ValueError, match="exceeds the context"):  # a bad request changes nothing
        engine.prepare("x", SamplingParams(max_new_tokens=10**6))
    assert len(engine.active) == 4
    while engine.active:
        for seq in [s for s in engine.active if s.finished]:
            engine.release(seq)
        if engine.active:
            engine.step()
    assert [s.token_ids for s in [first, *later]] == alone


def test_more_prompts_than_rows_run_in_waves(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=2)
    prompts = ["One", "Two words", "Three small words", "Four"]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    waves = engine.generate(prompts, params)
    singles = [Engine(model, tokenizer, max_batch_size=1).generate([p], params)[0] for p in prompts]
    assert [c.token_ids for c in waves] == [c.token_ids for c in singles]
    assert not engine.active


def test_chat_answers_capital_of_france(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer)
    answer = engine.chat([{"role": "user", "content": "What is the capital of France?"}], SamplingParams(max_new_tokens=30))
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"  # ended on <|im_end|>, which is not in the text
    assert "<|im_end|>" not in answer.text


def test_stream_deltas_concatenate_to_the_completion(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer)
    params = SamplingParams(max_new_tokens=40)
    prompt = engine.chat_prompt([{"role": "user", "content": "Repeat exactly: café, 日本語, 🙂"}])
    deltas = list(engine.stream(prompt, params))
    full = engine.generate([prompt], params)[0]
    # Multi-byte characters span several tokens; a delta emitted mid-character would put U+FFFD
    # into the concatenation where the one-shot decode has the real character.
    assert any(ord(ch) > 0x7F for ch in full.text)
    assert "".join(deltas) == full.text
    assert len(deltas) > 3


def test_stop_strings_cut_the_text_and_never_leak(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer)
    free = engine.generate(["1, 2, 3, 4,"], SamplingParams(max_new_tokens=20, ignore_eos=True))[0].text
    assert " 7" in free  # the model counts on
    params = SamplingParams(max_new_tokens=20, ignore_eos=True, stop=(" 7",))
    stopped = engine.generate(["1, 2, 3, 4,"], params)[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(" 7")]
    streamed = "".join(engine.stream("1, 2, 3, 4,", params))
    assert streamed == stopped.text


def test_seeded_sampling_is_reproducible_and_varies(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=3)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, top_k=50, min_p=0.01, seed=7, ignore_eos=True)
    a = engine.generate(["Tell me a story:"] * 3, params)
    b = engine.generate(["Tell me a story:"], params)
    assert a[0].token_ids == a[1].token_ids == b[0].token_ids  # same seed, same tokens, whatever the batch
    other = engine.generate(["Tell me a story:"], SamplingParams(**{**params.__dict__, "seed": 8}))
    assert other[0].token_ids != a[0].token_ids


def test_top_k_one_is_greedy_and_penalty_changes_output(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer)
    greedy = engine.generate(["a a a a a a"], SamplingParams(max_new_tokens=8, ignore_eos=True))[0]
    top1 = engine.generate(["a a a a a a"], SamplingParams(max_new_tokens=8, temperature=0.8, top_k=1, seed=1, ignore_eos=True))[0]
    assert top1.token_ids == greedy.token_ids
    loop = "red, blue, red, blue, red, blue, red, blue,"
    plain = engine.generate([loop], SamplingParams(max_new_tokens=8, ignore_eos=True))[0]
    assert set(plain.token_ids) <= set(tokenizer.encode(loop))  # greedy keeps repeating the prompt
    penalised = engine.generate([loop], SamplingParams(max_new_tokens=8, repetition_penalty=2.0, ignore_eos=True))[0]
    assert not set(penalised.token_ids[:1]) & set(tokenizer.encode(loop))


def test_logprobs_are_reported(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer)
    c = engine.generate(["The capital of France is"], SamplingParams(max_new_tokens=3, logprobs=2, ignore_eos=True))[0]
    assert len(c.logprobs) == 3
    for entry, token in zip(c.logprobs, c.token_ids):
        assert entry.token_id == token and entry.logprob <= 0
        assert entry.top[0][0] == token  # greedy picks the most likely
        assert abs(entry.top[0][1] - entry.logprob) < 1e-6


def test_rows_of_different_kinds_in_one_batch_decode_as_they_would_alone(smollm):
    """Plain greedy rows take one batched argmax; penalised, logprob and sampled rows beside them
    go through the full per-row path. Each must come out as it does in a batch of its own."""
    model, tokenizer = smollm
    loop = "red, blue, red, blue, red, blue,"
    requests = [("The capital of France is", SamplingParams(max_new_tokens=10, ignore_eos=True)),
                (loop, SamplingParams(max_new_tokens=10, repetition_penalty=2.0, ignore_eos=True)),
                ("Once upon a time", SamplingParams(max_new_tokens=10, logprobs=1, ignore_eos=True)),
                ("def add(a, b):", SamplingParams(max_new_tokens=10, temperature=0.9, seed=3, ignore_eos=True)),
                ("In 1492, Columbus", SamplingParams(max_new_tokens=10, ignore_eos=True))]
    engine = Engine(model, tokenizer, max_batch_size=len(requests))
    seqs = [engine.prepare(tokenizer.encode(prompt), params) for prompt, params in requests]
    engine.admit(seqs)
    while any(not s.finished for s in seqs):
        engine.step()
    for seq, (prompt, params) in zip(seqs, requests):
        alone = Engine(model, tokenizer, max_batch_size=1).generate([prompt], params)[0]
        assert seq.token_ids == alone.token_ids, prompt
    assert [e.token_id for e in seqs[2].logprobs] == seqs[2].token_ids
    assert seqs[0].token_ids == naive_greedy(model, tokenizer.encode(requests[0][0]), 10)


def test_context_overflow_is_a_clear_error(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_seq_len=64)
    with pytest.raises(ValueError, match="exceeds the context of 64"):
        engine.generate(["word " * 60], SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[1, 2, 10**6]], SamplingParams(max_new_tokens=2))
    assert not engine.active


def test_unknown_compile_setting_is_a_clear_error(smollm):
    with pytest.raises(ValueError, match="compile must be False, True or 'max'"):
        Engine(*smollm, compile="fast")


@pytest.mark.parametrize("bad", [
    dict(temperature=-1), dict(temperature=float("nan")), dict(temperature=1e6), dict(top_p=0), dict(top_p=1.5),
    dict(top_k=0), dict(max_new_tokens=0), dict(min_p=2.0), dict(repetition_penalty=0), dict(seed=-3),
    dict(stop=("",)), dict(logprobs=50), dict(presence_penalty=5),
])
def test_absurd_sampling_parameters_are_rejected(bad):
    with pytest.raises(ValueError, match="invalid sampling parameters"):
        SamplingParams(**bad)


def test_stop_prefix_overlap():
    assert _stop_prefix_overlap("hello wor", ("world",)) == 3
    assert _stop_prefix_overlap("hello", ("world",)) == 0
    assert _stop_prefix_overlap("ab", ("b", "abc")) == 2


def test_release_mid_generation_frees_the_row(smollm):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=2)
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    a = engine.add("First prompt", params)
    b = engine.add("Second, longer prompt here", params)
    engine.step()
    engine.release(a)  # a client went away
    assert a.finish_reason == "abort" and engine.active == [b] and b.row == 0
    while not b.finished:
        engine.step()
    expected = naive_greedy(model, b.prompt_ids, 10)
    assert b.token_ids == expected


def test_a_failed_prefill_leaves_the_engine_as_it_was(smollm, monkeypatch):
    model, tokenizer = smollm
    engine = Engine(model, tokenizer, max_batch_size=4)
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    running = engine.add("Hello", params)
    joining = [engine.prepare("one", params), engine.prepare("two", params)]

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("simulated out of memory")

    with monkeypatch.context() as patch:
        patch.setattr(model, "forward", out_of_memory)
        with pytest.raises(RuntimeError, match="simulated"):
            engine.admit(joining)
    assert engine.active == [running] and running.row == 0  # the joining rows were taken back
    assert all(seq.row == -1 for seq in joining)
    while not running.finished:
        engine.step()
    assert len(running.token_ids) == 4


# --------------------------------------------------------------------------------------------
# The compiled decode step
# --------------------------------------------------------------------------------------------
def test_compiled_step_never_recompiles_as_sequences_grow_join_and_leave(smollm):
    """One graph for a batch of one and one for larger batches, whatever the lengths: 200+ steps
    cross attention-window boundaries, a longer request grows the cache, rows join and leave."""
    from torch._dynamo.utils import counters

    from lmforge.core.config import ModelConfig
    from lmforge.model.quant import quantize_model
    from lmforge.model.transformer import Transformer, init_weights

    tokenizer = smollm[1]
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=128, max_seq_len=1024)
    model = Transformer(config)
    init_weights(model, seed=0)
    model = quantize_model(model.eval(), "int4")  # the packed kernels inside the graph
    torch._dynamo.reset()
    counters.clear()
    compiled = Engine(model, tokenizer, max_batch_size=3, compile=True)
    params = SamplingParams(max_new_tokens=210, ignore_eos=True)
    prompt = list(range(100, 110))
    first = compiled.add(prompt, params)
    compiled.step()
    assert counters["stats"]["unique_graphs"] == 1 and compiled.compile  # compiled, not fallen back to eager
    for _ in range(205):  # positions 11 -> 216: the attention window grows from 128 to 256 slots
        compiled.step()
    assert counters["stats"]["unique_graphs"] == 1
    compiled.release(first)
    # Rows of different lengths join and leave (batch 3 -> 2 -> 1), and a longer request grows the cache.
    prompts = [list(range(200, 203)), list(range(300, 340)), list(range(400, 600))]
    budgets = [5, 20, 300]
    outputs = [compiled.generate([p], SamplingParams(max_new_tokens=n, ignore_eos=True))[0] for p, n in zip(prompts, budgets)]
    batched = compiled.generate(prompts, SamplingParams(max_new_tokens=40, ignore_eos=True))
    assert compiled.cache.max_len == 513
    assert counters["stats"]["unique_graphs"] == 2  # + the graph for batches of two or more
    # The compiled step computes what the eager one does (bfloat16 matmul inputs: close, not bitwise).
    with torch.inference_mode():
        ids, positions = torch.tensor([[7], [8]]), torch.tensor([[30], [12]])
        assert torch.allclose(compiled._decode(ids, positions, 31), model.decode_step(ids, positions, compiled.cache, 128),
                              atol=2e-2, rtol=2e-2)
    assert [len(c.token_ids) for c in outputs] == budgets and all(len(c.token_ids) == 40 for c in batched)
