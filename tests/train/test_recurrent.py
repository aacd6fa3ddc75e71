"""Truncated BPTT: contiguous streams, state carried and reset, and a loss that falls."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from lmforge.data.shards import TokenData
from lmforge.model.lstm import LSTMConfig, LSTMLanguageModel, init_lstm_weights
from lmforge.train.config import OptimConfig
from lmforge.train.objective import ObjectiveConfig, train_objective
from lmforge.train.recurrent import CarriedStateLoss, split_tokens, stream_batches, stream_loss


def test_streams_continue_window_after_window_and_restart_fresh():
    tokens = np.arange(41)
    batches = stream_batches(tokens, batch_size=2, seq_len=5)  # 2 streams of 20 tokens: 4 windows each
    seen = [next(batches) for _ in range(5)]
    assert seen[0][2] and not any(fresh for _, _, fresh in seen[1:4]) and seen[4][2]
    assert seen[0][0].tolist() == [[0, 1, 2, 3, 4], [20, 21, 22, 23, 24]]
    assert seen[1][0][:, 0].tolist() == [5, 25]  # the next window continues each stream
    assert torch.equal(seen[0][1][:, :-1], seen[0][0][:, 1:])
    assert torch.equal(seen[4][0], seen[0][0])


def test_carried_state_is_dropped_on_a_fresh_window():
    model = LSTMLanguageModel(LSTMConfig(vocab_size=10, dim=8, n_layers=1))
    loss = CarriedStateLoss()
    x = torch.randint(10, (2, 4))
    loss(model, (x, x, True))
    carried, _ = loss(model, (x, x, False))
    fresh, _ = loss(model, (x, x, True))
    again, _ = CarriedStateLoss()(model, (x, x, True))
    assert not torch.allclose(carried, fresh) and torch.allclose(fresh, again)


def test_lstm_training_lowers_the_stream_loss(tiny_data, tmp_path):
    data = TokenData.open(tiny_data)
    model = LSTMLanguageModel(LSTMConfig(vocab_size=data.vocab_size, dim=32, n_layers=1))
    init_lstm_weights(model, seed=0)
    val = split_tokens(data.val, 4000)
    before = stream_loss(model, val, seq_len=32)
    config = ObjectiveConfig(out_dir=str(tmp_path), max_steps=40, batch_size=8,
                             optim=OptimConfig(lr=1e-2))
    train_objective(model, config, partial(next, stream_batches(split_tokens(data.train), 8, 32)), CarriedStateLoss())
    assert stream_loss(model, val, seq_len=32) < before - 0.5
