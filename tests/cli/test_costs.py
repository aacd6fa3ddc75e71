"""Cost records of runs: forward FLOPs from scaling.flops_per_token, training cost.json."""

from __future__ import annotations

import json

import pytest

from lmforge.cli.costs import forward_flops, write_training_cost
from lmforge.core.config import ModelConfig
from lmforge.core.cost import Rates
from lmforge.train.scaling import flops_per_token


def test_forward_flops_by_hand():
    config = ModelConfig(vocab_size=100, dim=64, n_layers=2, n_heads=4, ffn_dim=128, max_seq_len=64)
    d, h, L, V = 64, 128, 2, 100
    matmuls = L * (4 * d * d + 3 * d * h) + d * V  # multiply-adds per token outside attention
    per_key = L * 2 * d  # q.k and the value mix per attended key
    # 10 tokens over 10 keys each (a prefill), then 1 token over 11 keys (a decode step)
    expected = 2 * (11 * matmuls + (10 * 10 + 11) * per_key)
    assert forward_flops(config, 11, 10 * 10 + 11) == pytest.approx(expected)
    assert forward_flops(config, 5, 5 * 64) == pytest.approx(5 * flops_per_token(config, 64) / 3)


def test_training_cost_file(tmp_path):
    config = ModelConfig(vocab_size=100, dim=64, n_layers=2, n_heads=4, max_seq_len=64)
    path = write_training_cost(tmp_path, config, 64, 1000, 36.0, Rates(watts=100, usd_per_kwh=0.2, usd_per_hour=1.0))
    record = json.loads(path.read_text())
    assert record["flops"] == flops_per_token(config, 64) * 1000
    assert record["energy_kwh"] == pytest.approx(0.001) and record["usd"] == pytest.approx(0.0002 + 0.01)
