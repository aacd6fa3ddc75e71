"""Batches of token windows from a split: a resumable training sampler and a full-coverage eval pass.

Training (`TrainLoader`): each epoch cuts every shard into windows of seq_len + 1 tokens at a random
offset and visits them in a random order; both follow from (seed, epoch) alone, so the loader's whole
state is three integers (`state_dict`) and a restored loader continues with exactly the batches the
interrupted run would have drawn. One draw serves all ranks: global windows [p, p + B*world) are
split by rank, so N processes with micro-batch B see the same windows as one process accumulating
N micro-batches of B.

Evaluation (`eval_batches`): consecutive, non-overlapping windows that cover the whole split, so
every token after a shard's first is predicted exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmforge.data.shards import Split


class TrainLoader:
    def __init__(self, split: Split, seq_len: int, batch_size: int, *, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if seq_len <= 0 or batch_size <= 0:
            raise ValueError("seq_len and batch_size must be positive")
        self.arrays = split.arrays()
        self.seq_len, self.batch_size, self.seed, self.rank, self.world = seq_len, batch_size, seed, rank, world
        self.epoch = 0
        self.position = 0  # windows of this epoch already handed out (to all ranks)
        self._plan_epoch()
        if self.windows_per_epoch < batch_size * world:
            raise ValueError(f"split '{split.name}' has {split.tokens} tokens: too few for one batch of "
                             f"{batch_size * world} windows of {seq_len + 1} tokens")

    def _plan_epoch(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        offset = int(rng.integers(0, self.seq_len))
        counts = np.array([max(0, (len(a) - offset - 1) // self.seq_len) for a in self.arrays], dtype=np.int64)
        self._offset = offset
        self._cumulative = np.cumsum(counts)
        self.windows_per_epoch = int(self._cumulative[-1]) if len(counts) else 0
        self._order = rng.permutation(self.windows_per_epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._plan_epoch()
        self.position = int(state["position"])

    def _window(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self._cumulative, index, side="right"))
        first = int(self._cumulative[shard - 1]) if shard else 0
        start = self._offset + (index - first) * self.seq_len
        return self.arrays[shard][start:start + self.seq_len + 1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each int64 [batch_size, seq_len], for this rank."""
        span = self.batch_size * self.world
        if self.position + span > self.windows_per_epoch:
            self.epoch += 1
            self.position = 0
            self._plan_epoch()
        mine = self._order[self.position + self.rank * self.batch_size: self.position + (self.rank + 1) * self.batch_size]
        self.position += span
        rows = np.stack([self._window(int(i)) for i in mine]).astype(np.int64)
        batch = torch.from_numpy(rows)
        return batch[:, :-1], batch[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()


def eval_batches(split: Split, seq_len: int, batch_size: int, *, rank: int = 0, world: int = 1,
                 max_tokens: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering the split (or its first `max_tokens`), this rank's share."""
    windows: list[tuple[int, int, int]] = []  # (array, start, length incl. the target shift)
    arrays = split.arrays()
    budget = max_tokens if max_tokens is not None else sum(len(a) for a in arrays)
    for index, array in enumerate(arrays):
        length = min(len(array), budget + 1)
        for start in range(0, length - 1, seq_len):
            windows.append((index, start, min(seq_len + 1, length - start)))
        budget -= length - 1
        if budget <= 0:
            break
    mine = windows[rank::world]
    full = [w for w in mine if w[2] == seq_len + 1]
    for begin in range(0, len(full), batch_size):
        rows = np.stack([arrays[a][s:s + n] for a, s, n in full[begin:begin + batch_size]]).astype(np.int64)
        batch = torch.from_numpy(rows)
        yield batch[:, :-1], batch[:, 1:]
    for a, s, n in (w for w in mine if w[2] != seq_len + 1):
        batch = torch.from_numpy(np.asarray(arrays[a][s:s + n], dtype=np.int64))[None]
        yield batch[:, :-1], batch[:, 1:]
