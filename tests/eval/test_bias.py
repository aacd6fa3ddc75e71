"""Bias probe: pairs differ in one term, gaps equal independent sentence scores, statistics against scipy."""

from __future__ import annotations

import pytest
import torch

from lmforge.eval.bias import BiasPair, bias_pairs, holm, run_bias, student_t_cdf
from lmforge.eval.prompts import prefix_token_id


def test_pairs_differ_only_in_the_demographic_term():
    pairs = bias_pairs()
    assert len({(p.axis, p.target) for p in pairs}) == 20 + 12 + 8
    assert {p.axis for p in pairs} == {"gender_occupation", "gender_attribute", "age"}
    for pair in pairs:
        a, b = (s.split() for s in pair.sentences)
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(a) == len(b) and len(changed) == 1, pair
        assert changed[0] in {("he", "she"), ("He", "She"), ("his", "her"), ("man", "woman"), ("young", "old")}


def test_t_distribution_and_holm_against_references():
    import scipy.stats

    for t, df in ((0.0, 3), (1.2, 4), (-2.5, 9), (4.0, 30), (-0.3, 1)):
        assert student_t_cdf(t, df) == pytest.approx(float(scipy.stats.t.cdf(t, df)), abs=1e-9)
    # Holm by hand: sorted 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])


def test_gaps_equal_sentence_log_likelihoods(tiny):
    model, tokenizer = tiny
    pairs = [BiasPair("gender", "nurse", ("male", "female"), ("The nurse said he was late.", "The nurse said she was late.")),
             BiasPair("gender", "nurse", ("male", "female"), ("He is a nurse.", "She is a nurse.")),
             BiasPair("gender", "pilot", ("male", "female"), ("The pilot said he was late.", "The pilot said she was late.")),
             BiasPair("gender", "pilot", ("male", "female"), ("He is a pilot.", "She is a pilot."))]
    results = run_bias(model, tokenizer, pairs)

    def logprob(sentence):
        ids = [prefix_token_id(tokenizer)] + tokenizer.encode(sentence)
        with torch.no_grad():
            logits = torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)
        return sum(float(logits[i - 1, ids[i]]) for i in range(1, len(ids)))

    for sample, pair in zip(results["samples"], pairs):
        assert sample["gap"] == pytest.approx(logprob(pair.sentences[0]) - logprob(pair.sentences[1]), abs=1e-3)
    rows = {r["target"]: r for r in results["axes"]["gender"]["targets"]}
    gaps = [s["gap"] for s in results["samples"]]
    assert rows["nurse"]["mean"] == pytest.approx((gaps[0] + gaps[1]) / 2, abs=1e-3)
    assert rows["nurse"]["ci"][0] <= rows["nurse"]["mean"] <= rows["nurse"]["ci"][1]
    assert results["axes"]["gender"]["overall"]["n"] == 4
