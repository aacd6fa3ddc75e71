"""window_token_losses asks a decoder, an LSTM and a T5 prefix LM the same question."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmforge.core.config import ModelConfig
from lmforge.model.architectures import prefix_split, window_token_losses
from lmforge.model.lstm import LSTMConfig, LSTMLanguageModel
from lmforge.model.t5 import T5Config, T5ForConditionalGeneration
from lmforge.model.transformer import Transformer, init_weights

V = 40


def windows():
    return torch.randint(V, (3, 17), generator=torch.Generator().manual_seed(0))


def test_decoder_and_lstm_losses_are_next_token_cross_entropy():
    decoder = Transformer(ModelConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2, max_seq_len=32)).eval()
    init_weights(decoder, seed=0)
    lstm = LSTMLanguageModel(LSTMConfig(vocab_size=V, dim=16, n_layers=1)).eval()
    w = windows()
    with torch.no_grad():
        expected = F.cross_entropy(decoder(w[:, :-1]).transpose(1, 2), w[:, 1:], reduction="none")
        expected_lstm = F.cross_entropy(lstm(w[:, :-1])[0].transpose(1, 2), w[:, 1:], reduction="none")
    torch.testing.assert_close(window_token_losses(decoder, w), expected)
    torch.testing.assert_close(window_token_losses(lstm, w), expected_lstm)


def test_t5_prefix_lm_predicts_the_second_half_only():
    model = T5ForConditionalGeneration(T5Config(vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                                decoder_start_token_id=3, pad_token_id=3)).eval()
    w = windows()
    losses = window_token_losses(model, w)
    p = prefix_split(16)
    assert losses.shape == (3, 16)
    assert torch.isnan(losses[:, :p - 1]).all() and torch.isfinite(losses[:, p - 1:]).all()
    with torch.no_grad():  # column p - 1 predicts token p from the encoder alone
        logits = model(w[:, :p], torch.full((3, 1), 3))
    expected = F.cross_entropy(logits[:, 0], w[:, p], reduction="none")
    torch.testing.assert_close(losses[:, p - 1], expected)
    assert not math.isnan(float(losses.nanmean()))
