"""LSTM language-model training: truncated backpropagation through time with carried state.

The training text is read as `batch_size` contiguous streams (row b starts at b/B of the split)
cut into consecutive windows of `seq_len` tokens. The state at the end of one window starts the
next (detached: gradients flow back `seq_len` steps at most), so the model learns to use memory
longer than a window; when the streams wrap around the split the state starts fresh.
The pretraining data is the decoder's (a folder of `lmforge prepare`); the loop is
`train.objective.train_objective` with these batches and this loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import numpy as np
import torch

from lmforge.data.shards import Split
from lmforge.model.lstm import LSTMLanguageModel, State
from lmforge.train.losses import token_cross_entropy
from lmforge.train.objective import mean_loss


def split_tokens(split: Split, limit: int | None = None) -> np.ndarray:
    """The split's tokens as one int64 array (its first `limit` when given)."""
    parts, left = [], limit
    for array in split.arrays():
        take = array if left is None else array[:left]
        parts.append(np.asarray(take, dtype=np.int64))
        if left is not None:
            left -= len(take)
            if left <= 0:
                break
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def stream_batches(tokens: np.ndarray, batch_size: int, seq_len: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Endless (inputs [B, T], targets [B, T], fresh) windows of B contiguous streams; `fresh` is
    True on the first window of each pass, when a carried state must be dropped."""
    per_stream = (len(tokens) - 1) // batch_size
    windows = per_stream // seq_len
    if windows < 1:
        raise ValueError(f"{len(tokens)} tokens are too few for {batch_size} streams of {seq_len + 1} tokens")
    starts = np.arange(batch_size) * per_stream
    while True:
        for w in range(windows):
            index = starts[:, None] + w * seq_len + np.arange(seq_len + 1)[None, :]
            rows = torch.from_numpy(tokens[index])
            yield rows[:, :-1], rows[:, 1:], w == 0


class CarriedStateLoss:
    """The loss of one window given the state the previous window left (truncated BPTT)."""

    def __init__(self) -> None:
        self.state: State | None = None

    def __call__(self, model: LSTMLanguageModel, batch: tuple[torch.Tensor, torch.Tensor, bool]) -> tuple[torch.Tensor, int]:
        inputs, targets, fresh = batch
        device = model.lm_head.weight.device
        if fresh:
            self.state = None
        logits, state = model(inputs.to(device), self.state)
        self.state = model.detach_state(state)
        loss_sum, count = token_cross_entropy(logits, targets.to(device))
        return loss_sum, int(count)


def stream_loss(model: LSTMLanguageModel, tokens: np.ndarray, seq_len: int, batch_size: int = 8) -> float:
    """Mean next-token loss over `tokens` read once as contiguous streams with the state carried
    through (how the LSTM is meant to read text)."""
    windows = ((len(tokens) - 1) // batch_size) // seq_len
    return mean_loss(model, CarriedStateLoss(), islice(stream_batches(tokens, batch_size, seq_len), windows))
