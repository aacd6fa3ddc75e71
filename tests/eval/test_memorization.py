"""Memorization audit: exposure against an independent rank, the skew-normal against scipy, extraction."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.data.canaries import Canary, CanaryFormat
from lmforge.eval.memorization import AuditConfig, audit_canaries, exposure_table, skewnorm_fit, skewnorm_logcdf


def _bits_by_hand(model, tokenizer, prefix, secret):
    """-log2 P(secret tokens | boundary + prefix tokens) from one full forward pass."""
    ids, offsets = tokenizer.encode_with_offsets(prefix + secret)
    split = next(i for i, (_, end) in enumerate(offsets) if end > len(prefix))
    boundary = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    sequence = torch.tensor([[boundary] + ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(sequence)[0].float(), dim=-1)
    total = sum(float(logprobs[position - 1, sequence[0, position]]) for position in range(1 + split, len(ids) + 1))
    return -total / math.log(2)


def test_exact_exposure_equals_rank_among_all_candidates(tiny):
    model, tokenizer = tiny
    canaries = [Canary("c0", "custom", "my code is ", "47", "dd", 3), Canary("c1", "custom", "pin: ", "5-1", "d-d", 1)]
    results = audit_canaries(model, tokenizer, canaries, AuditConfig(enumerate_limit=1000, batch_size=37))
    for canary, row in zip(canaries, results["canaries"]):
        space = CanaryFormat(canary.format)
        bits = {m: _bits_by_hand(model, tokenizer, canary.prefix, m) for m in (space.member(i) for i in range(space.size))}
        rank = 1 + sum(1 for b in bits.values() if b < bits[canary.secret] - 1e-4)
        assert row["method"] == "exact"
        assert row["secret_bits"] == pytest.approx(bits[canary.secret], abs=1e-3)
        assert row["rank"] == rank
        assert row["exposure"] == pytest.approx(math.log2(space.size) - math.log2(rank), abs=1e-3)
        # extraction: the greedy continuation of the prefix, compared with the secret
        assert row["extracted"] == row["greedy"].startswith(canary.secret)
    assert [r["repetitions"] for r in results["by_repetitions"]] == [1, 3]


def test_large_spaces_are_extrapolated_from_samples(tiny):
    model, tokenizer = tiny
    canary = Canary("c", "digits", "the random number is ", "281265017", "ddddddddd", 4)
    row = audit_canaries(model, tokenizer, [canary], AuditConfig(samples=60, enumerate_limit=10))["canaries"][0]
    assert row["method"] == "extrapolated"
    assert 0 <= row["exposure"] <= row["log2_space"]
    # The sampled estimate saturates at log2(samples) bits above chance: both agree in spirit.
    assert row["sampled_exposure"] <= math.log2(61) + 1e-9 and row["fit"]["scale"] > 0


def test_skew_normal_against_scipy():
    import scipy.stats as scipy_stats  # an independent reference (installed with the dev extras)
    values = scipy_stats.skewnorm.rvs(4.0, loc=30.0, scale=5.0, size=20000, random_state=0)
    location, scale, alpha = skewnorm_fit(values.tolist())
    assert location == pytest.approx(30.0, abs=0.3) and scale == pytest.approx(5.0, rel=0.05)
    assert alpha == pytest.approx(4.0, rel=0.35)
    for x in (10.0, 25.0, 29.0, 33.0, 45.0):  # far left tail (log F ~ -100 nats) to the right side
        assert skewnorm_logcdf(x, 30.0, 5.0, 4.0) == pytest.approx(float(scipy_stats.skewnorm.logcdf(x, 4.0, 30.0, 5.0)),
                                                                   rel=1e-4, abs=1e-6)
    assert skewnorm_logcdf(20.0, 0.0, 1.0, 0.0) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="not all equal"):
        skewnorm_fit([1.0, 1.0, 1.0])


def test_table_groups_by_kind_and_repetitions():
    rows = [{"kind": "ssn", "repetitions": 4, "exposure": 2.0, "log2_space": 29.1, "extracted": False},
            {"kind": "ssn", "repetitions": 4, "exposure": 6.0, "log2_space": 29.1, "extracted": True},
            {"kind": "digits", "repetitions": 1, "exposure": 1.0, "log2_space": 29.9, "extracted": False}]
    table = exposure_table(rows)
    assert table[1] == {"kind": "ssn", "repetitions": 4, "canaries": 2, "mean_exposure": 4.0, "max_exposure": 6.0,
                        "log2_space": 29.1, "extracted": 1}


def test_a_memorized_secret_has_full_exposure_and_is_extracted(tmp_path):
    import string

    from lmforge.core.config import ModelConfig
    from lmforge.model.transformer import Transformer, init_weights
    from lmforge.tokenizer.train import train_tokenizer

    (tmp_path / "alphabet.txt").write_text(string.printable)
    tokenizer, _ = train_tokenizer([str(tmp_path / "alphabet.txt")], kind="char")
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=32))
    init_weights(model, seed=0)
    canary = Canary("c", "custom", "my pin is ", "4271", "dddd", 100)
    ids = torch.tensor([[tokenizer.bos_id] + tokenizer.encode(canary.text)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):  # the model sees nothing but the canary: it memorizes it
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    row = audit_canaries(model.eval(), tokenizer, [canary], AuditConfig(enumerate_limit=10_000))["canaries"][0]
    assert row["rank"] == 1 and row["exposure"] == pytest.approx(math.log2(10_000), abs=1e-3)
    assert row["extracted"] and row["greedy"].startswith("4271")
