"""Truncated backpropagation through time for the LSTM language model.

The training text is read as B contiguous streams cut into consecutive windows of `seq_len`
tokens. The state at the end of one window starts the next (detached: gradients flow back
`seq_len` steps at most), so the model learns to use memory longer than a window.

Streams run for `segment_windows` windows, then every stream jumps to a new random place and the
state starts fresh. Without the jumps (segment_windows=None: stream b starts at b/B of the split
and reads on to its end) consecutive batches come from the same B files for hundreds of steps;
measured on the stdlib corpus, the model then tracks whichever files it is reading: its training
loss rose again after step 1,000 and validation loss went 2.30 -> 2.64 while the learning rate
decayed, and its cell state grew without bound (|c| up to 400).

The pieces, used by `lmforge pretrain` with `architecture: lstm` (train/pretrain.py, the
decoder's loop) and by `lmforge compare` (train/compare.py, through train/objective.py):

    StreamLoader      the windows, resumable (`state_dict`), each batch (inputs, targets, fresh)
    CarriedState      the (h, c) carried from window to window; `logits(model, batch)` is the
                      forward a training step calls; its `state_dict` goes into checkpoints
    fresh_state_logits   a window read from a zero state (validation, like the decoder's windows)
    sample_text       sampled continuations for the training log
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.data.shards import Split
from lmforge.model.lstm import LSTMLanguageModel, State
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.losses import token_cross_entropy
from lmforge.train.objective import mean_loss

StreamBatch = tuple[torch.Tensor, torch.Tensor, bool]  # inputs [B, T], targets [B, T], first window of a pass


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


class SplitTokens:
    """A split's memory-mapped shards read as one sequence by global position, without copying
    them into memory (`tokens[index]` for an integer array `index`)."""

    def __init__(self, split: Split) -> None:
        self.arrays = split.arrays()
        self.ends = np.cumsum([len(a) for a in self.arrays], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.ends, index, side="right")
        out = np.empty(index.shape, dtype=np.int64)
        for s in np.unique(shard):
            where = shard == s
            first = int(self.ends[s - 1]) if s else 0
            out[where] = self.arrays[s][index[where] - first]
        return out


class StreamLoader:
    """Consecutive windows of `batch_size` streams per process; `next_batch()` -> (inputs [B, T],
    targets [B, T], fresh), fresh on the first window after the streams (re)start.

    segment_windows=None: the text is cut into batch_size x world contiguous streams, rank r reads
    its own batch_size of them to the end, then all start again. segment_windows=K: every K windows
    each stream jumps to a random start (drawn from `seed`, the segment number and the rank, so a
    resumed run reads the same windows)."""

    def __init__(self, tokens: np.ndarray | SplitTokens, seq_len: int, batch_size: int, *, rank: int = 0,
                 world: int = 1, segment_windows: int | None = None, seed: int = 0) -> None:
        if seq_len <= 0 or batch_size <= 0:
            raise ValueError("seq_len and batch_size must be positive")
        if segment_windows is not None and segment_windows <= 0:
            raise ValueError(f"segment_windows must be positive (or None), got {segment_windows}")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.rank, self.seed, self.segment_windows = rank, seed, segment_windows
        if segment_windows is None:
            streams = batch_size * world
            per_stream = (len(tokens) - 1) // streams
            self.windows = per_stream // seq_len
            self.starts = (np.arange(batch_size) + rank * batch_size) * per_stream
        else:
            self.windows = segment_windows
            self.span = segment_windows * seq_len + 1  # tokens one segment of a stream reads
            if len(tokens) < self.span:
                raise ValueError(f"{len(tokens)} tokens are too few for segments of {segment_windows} windows "
                                 f"of {seq_len + 1} tokens")
            self.starts = self._segment_starts(0)
        if self.windows < 1:
            raise ValueError(f"{len(tokens)} tokens are too few for {batch_size * world} streams of {seq_len + 1} tokens")
        self.window = 0  # the next window of the pass (a segment, when segment_windows is set)
        self.passes = 0

    def _segment_starts(self, segment: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, segment, self.rank])
        return rng.integers(0, len(self.tokens) - self.span + 1, size=self.batch_size)

    def state_dict(self) -> dict[str, int]:
        return {"window": self.window, "passes": self.passes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not 0 <= int(state["window"]) < self.windows:
            raise ValueError(f"loader state: window {state['window']} is outside this data's {self.windows} windows")
        self.window, self.passes = int(state["window"]), int(state["passes"])
        if self.segment_windows is not None:
            self.starts = self._segment_starts(self.passes)

    def next_batch(self) -> StreamBatch:
        index = self.starts[:, None] + self.window * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        rows = torch.from_numpy(np.asarray(self.tokens[index], dtype=np.int64))
        fresh = self.window == 0
        self.window += 1
        if self.window == self.windows:
            self.window, self.passes = 0, self.passes + 1
            if self.segment_windows is not None:
                self.starts = self._segment_starts(self.passes)
        return rows[:, :-1], rows[:, 1:], fresh

    def __iter__(self) -> Iterator[StreamBatch]:
        while True:
            yield self.next_batch()


def stream_batches(tokens: np.ndarray, batch_size: int, seq_len: int, segment_windows: int | None = None,
                   seed: int = 0) -> Iterator[StreamBatch]:
    """Endless (inputs [B, T], targets [B, T], fresh) windows of B streams (one process)."""
    return iter(StreamLoader(tokens, seq_len, batch_size, segment_windows=segment_windows, seed=seed))


class CarriedState:
    """The LSTM's (h, c) carried from one window to the next (truncated BPTT): `logits(model, batch)`
    runs a window from the state the previous one left (none on a fresh window) and keeps the new
    state, detached. `model` may be the LSTM or a DDP wrapper around it."""

    def __init__(self) -> None:
        self.state: State | None = None

    def logits(self, model: nn.Module, batch: StreamBatch) -> torch.Tensor:
        inputs, _, fresh = batch
        if fresh:
            self.state = None
        logits, state = model(inputs, self.state)
        self.state = LSTMLanguageModel.detach_state(state)
        return logits

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors for a checkpoint's train_state.pt (empty before the first window)."""
        return {} if self.state is None else {"h": self.state[0].cpu(), "c": self.state[1].cpu()}

    def load_state_dict(self, saved: dict[str, Any], device: torch.device) -> None:
        self.state = (saved["h"].to(device), saved["c"].to(device)) if saved else None


class CarriedStateLoss(CarriedState):
    """The loss of one window given the state the previous window left: (summed loss, count), the
    loss of train/objective.py's loop."""

    def __call__(self, model: LSTMLanguageModel, batch: StreamBatch) -> tuple[torch.Tensor, int]:
        inputs, targets, fresh = batch
        device = model.lm_head.weight.device
        logits = self.logits(model, (inputs.to(device), targets, fresh))
        loss_sum, count = token_cross_entropy(logits, targets.to(device))
        return loss_sum, int(count)


def fresh_state_logits(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Logits of a window read from a zero state: how validation scores the LSTM on the decoder's
    held-out windows."""
    return model(batch[0])[0]


def stream_loss(model: LSTMLanguageModel, tokens: np.ndarray, seq_len: int, batch_size: int = 8) -> float:
    """Mean next-token loss over `tokens` read once as contiguous streams with the state carried
    through (how the LSTM is meant to read text)."""
    windows = ((len(tokens) - 1) // batch_size) // seq_len
    return mean_loss(model, CarriedStateLoss(), islice(stream_batches(tokens, batch_size, seq_len), windows))


def sample_text(model: LSTMLanguageModel, tokenizer: Tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
                start_id: int, temperature: float = 0.8, seed: int = 0) -> list[str]:
    """Sampled continuations of `prompts`, each read after `start_id` (the data's document boundary,
    so an empty prompt starts a document); the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=model.lm_head.weight.device).manual_seed(seed)
    texts = []
    try:
        for prompt in prompts:
            ids = [start_id] + tokenizer.encode(prompt)
            prompt_ids = torch.tensor([ids], device=model.lm_head.weight.device)
            new = model.generate(prompt_ids, max_new_tokens, temperature=temperature, generator=generator)
            texts.append(tokenizer.decode(new[0].tolist()))
    finally:
        model.train(was_training)
    return texts
