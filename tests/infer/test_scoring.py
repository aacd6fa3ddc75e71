"""Batched log-likelihood scoring against hand-computed values on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.infer.scoring import ContinuationScore, perplexity, rolling_windows, score_continuations, score_rolling
from lmforge.model.transformer import Transformer, init_weights

V = 11


def tiny_model(seed: int = 0, max_seq_len: int = 32, family: str = "llama") -> Transformer:
    config = ModelConfig(family=family, vocab_size=V, dim=16, n_layers=2, n_heads=2, n_kv_heads=1 if family == "llama" else None,
                         ffn_dim=32, max_seq_len=max_seq_len)
    model = Transformer(config)
    init_weights(model, seed=seed)
    with torch.no_grad():  # larger weights than GPT-2 init, so that tokens' probabilities really differ
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(20)
    return model.eval()


def reference_logprob(model: Transformer, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """One unpadded sequence, float64 log-softmax, summed by hand."""
    ids = torch.tensor([(context + continuation)[:-1]])  # the last token is only a target
    with torch.no_grad():
        logits = model(ids)[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    total, greedy = 0.0, True
    for offset, token in enumerate(continuation):
        row = log_probs[len(context) + offset - 1]
        total += float(row[token])
        greedy &= int(row.argmax()) == token
    return total, greedy


def test_uniform_model_gives_minus_n_log_v():
    """All-zero weights: every logit is 0, so each token costs exactly ln V and argmax is token 0."""
    model = tiny_model()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    scores = score_continuations(model, [([1, 2], [3, 4, 5]), ([7], [0]), ([2, 2, 2, 2], [0, 0])])
    assert scores[0].logprob == pytest.approx(-3 * math.log(V), abs=1e-6)
    assert scores[0].n_tokens == 3 and not scores[0].is_greedy
    assert scores[1].logprob == pytest.approx(-math.log(V), abs=1e-6) and scores[1].is_greedy
    assert scores[2].logprob == pytest.approx(-2 * math.log(V), abs=1e-6) and scores[2].is_greedy


def test_bigram_model_matches_a_hand_built_table():
    """With attention and MLP outputs zeroed, logits depend on the current token only:
    logits(x) = rmsnorm(E[x]) @ E^T. Build that table by hand and add up the entries."""
    model = tiny_model(seed=3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    E = model.model.embed_tokens.weight.detach().double()
    eps = model.config.norm_eps
    h = E / torch.sqrt((E * E).mean(dim=-1, keepdim=True) + eps)
    table = torch.log_softmax(h @ E.T, dim=-1)  # table[prev, next]

    requests = [([4], [7]), ([1, 2, 3], [9, 0, 10]), ([5, 5], [5]), ([10, 9, 8, 7, 6], [5, 4])]
    scores = score_continuations(model, requests, batch_size=3)
    for (context, continuation), score in zip(requests, scores):
        sequence = context + continuation
        expected = sum(float(table[sequence[i - 1], sequence[i]]) for i in range(len(context), len(sequence)))
        greedy = all(int(table[sequence[i - 1]].argmax()) == sequence[i] for i in range(len(context), len(sequence)))
        assert score.logprob == pytest.approx(expected, abs=1e-4)
        assert score.is_greedy == greedy
        assert score.n_tokens == len(continuation)
    # A greedy continuation built from the table is recognised as such.
    chain = [3]
    for _ in range(4):
        chain.append(int(table[chain[-1]].argmax()))
    [score] = score_continuations(model, [(chain[:1], chain[1:])])
    assert score.is_greedy


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_padded_sorted_batches_equal_one_by_one_scoring(family):
    model = tiny_model(seed=1, family=family)
    generator = torch.Generator().manual_seed(0)
    requests = []
    for _ in range(13):
        n_context = int(torch.randint(1, 12, (1,), generator=generator))
        n_continuation = int(torch.randint(1, 6, (1,), generator=generator))
        requests.append((torch.randint(0, V, (n_context,), generator=generator).tolist(),
                         torch.randint(0, V, (n_continuation,), generator=generator).tolist()))
    requests.append(requests[2])  # a duplicate is scored once, answered twice
    expected = [reference_logprob(model, c, k) for c, k in requests]
    seen = []
    for batch_size, max_tokens in ((1, 10_000), (4, 10_000), (64, 10_000), (64, 20)):
        scores = score_continuations(model, requests, batch_size=batch_size, max_batch_tokens=max_tokens,
                                     progress=seen.append)
        assert sum(seen) == len(requests)
        seen.clear()
        for (logprob, greedy), score in zip(expected, scores):
            assert score.logprob == pytest.approx(logprob, abs=1e-4)
            assert score.is_greedy == greedy


def test_choices_sharing_a_context_are_not_merged():
    """Continuations that differ only in their last token feed the model the same inputs, yet are
    different requests (a multiple-choice question with one-token answers)."""
    model = tiny_model(seed=4)
    requests = [([1, 2, 3], [4]), ([1, 2, 3], [5]), ([1, 2], [3, 4]), ([1, 2], [3, 5]), ([1, 2, 3], [4])]
    scores = score_continuations(model, requests)
    for (context, continuation), score in zip(requests, scores):
        assert score.logprob == pytest.approx(reference_logprob(model, context, continuation)[0], abs=1e-4)
    assert scores[0].logprob != pytest.approx(scores[1].logprob)
    assert scores[0] == scores[4]


def test_long_context_is_truncated_from_the_left():
    model = tiny_model(max_seq_len=8)
    context, continuation = list(range(11)) * 2, [3, 4]
    [score] = score_continuations(model, [(context, continuation)])
    whole = (context + continuation)[-9:]  # 8 inputs + the last target
    logprob, _ = reference_logprob(model, whole[:-2], whole[-2:])
    assert score.logprob == pytest.approx(logprob, abs=1e-4)


def test_bad_requests_fail_clearly():
    model = tiny_model(max_seq_len=8)
    with pytest.raises(ValueError, match="empty context"):
        score_continuations(model, [([], [1])])
    with pytest.raises(ValueError, match="empty continuation"):
        score_continuations(model, [([1], [])])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        score_continuations(model, [([1], [V])])
    with pytest.raises(ValueError, match="does not fit"):
        score_continuations(model, [([1], [1] * 9)])


def test_rolling_windows_score_every_token_once():
    ids = list(range(100, 123))  # 23 tokens
    for max_len, stride, prefix in ((4, None, 0), (4, 2, 0), (8, 3, None), (50, None, 0), (1, 1, 7)):
        windows = rolling_windows(ids, max_len, stride, prefix)
        scored = [t for _, continuation in windows for t in continuation]
        assert scored == (ids if prefix is not None else ids[1:])
        for context, continuation in windows:
            assert context and len(context) + len(continuation) - 1 <= max_len
            assert len(continuation) <= (stride or max_len)
    # The lm-evaluation-harness example: tokens 0..9, prefix P, max length 4.
    windows = rolling_windows(list(range(10)), 4, prefix_id=99)
    assert windows == [([99], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]
    with pytest.raises(ValueError):
        rolling_windows(ids, 4, stride=5)


def test_rolling_loglikelihood_adds_up_windows_and_matches_full_context():
    model = tiny_model(seed=2, max_seq_len=32)
    generator = torch.Generator().manual_seed(1)
    short = torch.randint(0, V, (20,), generator=generator).tolist()
    long = torch.randint(0, V, (45,), generator=generator).tolist()
    # A document that fits one window: the plain log-likelihood of the text given the prefix.
    [score] = score_rolling(model, [short], prefix_id=0)
    logprob, _ = reference_logprob(model, [0], short)
    assert score.logprob == pytest.approx(logprob, abs=1e-4) and score.n_tokens == 20
    # Longer than the window: the sum over the explicit windows.
    scores = score_rolling(model, [long, short], prefix_id=0, max_len=16, stride=8, batch_size=2)
    expected = sum(reference_logprob(model, c, k)[0] for c, k in rolling_windows(long, 16, 8, 0))
    assert scores[0].logprob == pytest.approx(expected, abs=1e-3) and scores[0].n_tokens == 45
    # Without a prefix the first token is not scored.
    [unprefixed] = score_rolling(model, [short])
    assert unprefixed.n_tokens == 19
    assert unprefixed.logprob == pytest.approx(reference_logprob(model, short[:1], short[1:])[0], abs=1e-4)
    assert perplexity(ContinuationScore(-2 * math.log(3), 2, False)) == pytest.approx(3.0)
