"""`lmforge compare`'s training side: matched sizes and FLOP counts (against torch's FLOP counter
for the matrix products, by hand for attention and the LSTM's gates)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmforge.model.lstm import LSTMLanguageModel
from lmforge.model.t5 import T5ForConditionalGeneration
from lmforge.model.transformer import Transformer
from lmforge.train.compare import (CompareConfig, decoder_config, decoder_step_flops, lstm_config, lstm_step_flops,
                                   parameters, t5_config, t5_prefix_loss, t5_step_flops)
from lmforge.train.losses import token_cross_entropy

V, B, T = 100, 2, 64
CONFIG = CompareConfig(data="unused", seq_len=T, batch_size=B, dim=32, n_layers=2, n_heads=4)


def counted(step) -> int:
    """Forward + backward FLOPs of the weight matrix products (aten.mm/addmm) as torch counts them;
    attention (batched products or fused kernels) and the LSTM's cells are checked by hand."""
    with FlopCounterMode(display=False) as counter:
        step()
    return sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in ("aten.mm", "aten.addmm"))


@pytest.fixture(scope="module")
def models():
    decoder = Transformer(decoder_config(CONFIG, V))
    target = parameters(decoder)
    return decoder, LSTMLanguageModel(lstm_config(target, V, 2)), T5ForConditionalGeneration(t5_config(CONFIG, target, V, 3, 0))


def test_parameter_counts_are_matched(models):
    decoder, lstm, t5 = models
    for other in (lstm, t5):
        assert abs(parameters(other) - parameters(decoder)) / parameters(decoder) < 0.05
    assert parameters(lstm) == lstm.config.num_parameters()


def test_flops_per_step_match_counted_products_plus_attention(models):
    decoder, lstm, t5 = models
    x = torch.randint(V, (B, T + 1))
    L, inner = CONFIG.n_layers, CONFIG.dim
    matmuls = counted(lambda: token_cross_entropy(decoder(x[:, :-1]), x[:, 1:])[0].backward())
    attention = 3 * B * T * 2 * 2 * L * inner * (T + 1) / 2  # scores and weighted sum over the mean causal context
    assert decoder_step_flops(decoder, B, T) == pytest.approx(matmuls + attention, rel=0.01)

    matmuls = counted(lambda: t5_prefix_loss(t5, (x[:, :-1], x[:, 1:]))[0].backward())
    S, D = T // 2, T + 1 - T // 2
    layers = CONFIG.t5_layers
    attention = 3 * B * 2 * 2 * inner * layers * (S * S + D * ((D + 1) / 2 + S))
    assert t5_step_flops(t5, B, T) == pytest.approx(matmuls + attention, rel=0.01)

    head = counted(lambda: token_cross_entropy(lstm(x[:, :-1])[0], x[:, 1:])[0].backward())  # the head only
    gates = 3 * B * T * 2 * lstm.config.n_layers * 8 * lstm.config.dim ** 2  # 4 gates x (input + recurrent) matrices
    assert lstm_step_flops(lstm, B, T) == pytest.approx(head + gates, rel=1e-6)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible"):
        CompareConfig(data="x", dim=30, n_heads=4)
