"""Cost: rates from the environment, the record's arithmetic, tokens counted through the backbone."""

from __future__ import annotations

import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.core.cost import Rates, TokenCounter, cost_record
from lmforge.model.transformer import Transformer


def test_rates_and_record(monkeypatch):
    monkeypatch.setenv("LMFORGE_WATTS", "250")
    rates = Rates.from_env(usd_per_hour=2.0)
    assert rates == Rates(watts=250.0, usd_per_kwh=0.15, usd_per_hour=2.0)
    record = cost_record(1e15, 7200, rates, tokens=5)
    assert record["energy_kwh"] == pytest.approx(0.5) and record["usd"] == pytest.approx(0.5 * 0.15 + 2 * 2.0)
    assert record["tokens"] == 5 and record["rates"]["watts"] == 250.0
    monkeypatch.setenv("LMFORGE_USD_PER_KWH", "cheap")
    with pytest.raises(ValueError, match="LMFORGE_USD_PER_KWH must be a number"):
        Rates.from_env()
    with pytest.raises(ValueError, match="watts"):
        Rates(watts=-1)


def test_token_counter_sees_forward_and_decode_steps():
    model = Transformer(ModelConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, max_seq_len=32)).eval()
    with TokenCounter(model) as counter, torch.no_grad():
        model(torch.zeros(3, 5, dtype=torch.long))  # 15 positions over 5 keys each
        cache = model.new_cache(rows=2, max_len=16)
        model.decode_step(torch.zeros(2, 1, dtype=torch.long), torch.tensor([[0], [3]]), cache, slots=8)
    assert counter.tokens == 15 + 2 and counter.token_keys == 15 * 5 + 2 * 8
    model(torch.zeros(1, 2, dtype=torch.long))  # after the block: not counted
    assert counter.tokens == 17
