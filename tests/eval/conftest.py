"""Fixtures shared by the eval tests."""

from __future__ import annotations

import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.model.transformer import Transformer, init_weights


@pytest.fixture(scope="module")
def tiny(smollm):
    """A 2-layer random model over SmolLM2's vocabulary (fast, and its tokenizer is real)."""
    _, tokenizer = smollm
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                         max_seq_len=256)
    model = Transformer(config)
    init_weights(model, seed=11)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # tied: a peakier, more informative random model
    return model.eval(), tokenizer
