"""Preference pairs from the model's own samples: verifiable pairs and the constitutional recipe."""

from __future__ import annotations

import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.data.constitution import Constitution
from lmforge.data.synthetic import make_items
from lmforge.infer.sampling import SamplingParams
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.train import train_bpe
from lmforge.train.feedback import constitutional_pairs, sample_answers, verifiable_pairs

CONSTITUTION = Constitution.from_dict({"principles": [
    {"name": "short", "critique": "Is it too long?", "revision": "Rewrite it shorter.", "check": {"max_words": 3}}]})


@pytest.fixture(scope="module")
def tiny():
    items = make_items("reverse", 60)
    tokenizer = train_bpe([f"{i.question} {i.answer}" for i in items] * 2, vocab_size=300)
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=64, max_seq_len=512, tie_embeddings=True)
    model = Transformer(config)
    init_weights(model, seed=0)
    return model.eval(), tokenizer, items


def test_sampling_is_seeded_and_varied(tiny):
    model, tokenizer, items = tiny
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=123)  # params.seed is ignored
    chats = [i.prompt_messages() for i in items[:3]]
    state = torch.get_rng_state()
    first = sample_answers(model, tokenizer, chats, params, n=4, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
    assert first == sample_answers(model, tokenizer, chats, params, n=4, seed=5)
    assert first != sample_answers(model, tokenizer, chats, params, n=4, seed=6)
    assert len(first) == 3 and all(len(row) == 4 for row in first) and len(set(first[0])) > 1
    with pytest.raises(ValueError, match="need sampling"):
        sample_answers(model, tokenizer, chats, SamplingParams(max_new_tokens=4), n=2)


def test_verifiable_pairs_put_a_correct_answer_first(tiny):
    model, tokenizer, items = tiny

    def judge(item, text: str) -> bool:  # any deterministic rule of the item and the text
        return len(text) % 2 == len(item.question) % 2

    pairs, report = verifiable_pairs(model, tokenizer, items[:12], judge, samples=4,
                                     params=SamplingParams(max_new_tokens=6, temperature=1.0), seed=3)
    assert report.prompts == 12 and report.pairs == len(pairs) > 0
    assert report.pairs + sum(report.dropped.values()) == 12
    assert 0 < report.details["sample accuracy"] < 1
    by_question = {i.question: i for i in items}
    for pair in pairs:
        item = by_question[pair.prompt[-1]["content"]]
        assert pair.prompt == tuple(item.prompt_messages())
        assert judge(item, pair.chosen[0]["content"]) and not judge(item, pair.rejected[0]["content"])
    again, _ = verifiable_pairs(model, tokenizer, items[:12], judge, samples=4,
                                params=SamplingParams(max_new_tokens=6, temperature=1.0), seed=3)
    assert again == pairs  # reproducible


def test_constitutional_pairs_keep_what_the_judge_prefers(tiny):
    model, tokenizer, items = tiny
    prompts = [[{"role": "user", "content": i.question}] for i in items[:8]]
    seen = {}

    def prefer(prompts_, revisions, answers, principles):
        seen["n"] = len(revisions)
        assert all(p.name == "short" for p in principles)
        return [len(r) < len(a) for r, a in zip(revisions, answers)]

    sampled = SamplingParams(max_new_tokens=8, temperature=1.0)
    pairs, report = constitutional_pairs(model, tokenizer, prompts, CONSTITUTION, prefer, params=sampled)
    assert report.prompts == 8 and report.pairs == len(pairs)
    assert report.pairs + sum(report.dropped.values()) == 8 and seen["n"] <= 8
    for pair in pairs:
        assert len(pair.chosen[0]["content"]) < len(pair.rejected[0]["content"])
        assert pair.source == "constitution:short" and pair.prompt in [tuple(p) for p in prompts]
    nothing, report = constitutional_pairs(model, tokenizer, prompts, CONSTITUTION, lambda *a: [False] * len(a[1]),
                                           params=sampled)
    assert not nothing and report.dropped["judge did not prefer the revision"] == seen["n"]
