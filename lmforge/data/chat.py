"""Chat data for supervised fine-tuning: JSONL conversations in, packed (ids, loss-mask) rows out.

Input: one JSON object per line with an OpenAI-style `messages` list
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}
Blank lines are skipped; any other problem is a `ValueError` naming the file, the line number and
what is wrong. Turning messages into ids is the tokenizer layer's job (`render_conversation`, the
single owner of the chat format); this module only reads, checks, packs and batches.

Packing: short conversations are combined into rows of at most `seq_len + 1` tokens by
first-fit-decreasing, so little compute goes to padding. `collate` numbers the conversations of a
row so that the model attends within each one only (a block-diagonal causal mask, positions
restarting per conversation); only assistant tokens carry loss.
`ChatBatches` serves the rows in a seeded order per epoch and resumes from three integers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.readers import jsonl_objects, parse_json_object
from lmforge.core.files import write_text_atomically
IGNORE_INDEX = -100  # target value that carries no loss (torch's cross_entropy default)
CHAT_ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 16 << 20

__all__ = ["CHAT_ROLES", "ChatBatches", "ChatExample", "IGNORE_INDEX", "PackedRow", "check_messages", "collate",
           "pack_examples", "parse_chat_line", "read_chat_jsonl", "write_chat_jsonl"]


@dataclass(frozen=True)
class ChatExample:
    """One validated conversation and where it came from (for error messages)."""

    messages: tuple[dict[str, str], ...]
    source: str = "<memory>"
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def check_messages(messages: Any, roles: Iterable[str] = CHAT_ROLES, where: str = "") -> list[dict[str, Any]]:
    """The structure every conversation needs: a list of dicts, each with a `role` from `roles`
    and string `content`. Returns shallow copies (extra keys such as tool_calls pass through);
    errors start with `where` (file:line) when given."""
    prefix = f"{where}: " if where else ""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"{prefix}'messages' must be a list, got {type(messages).__name__}")
    roles = tuple(roles)
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{prefix}messages[{index}] must be an object, got {type(message).__name__}")
        role = message.get("role")
        if role not in roles:
            raise ValueError(f"{prefix}messages[{index}] has role {role!r}; expected one of {', '.join(roles)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"{prefix}messages[{index}] ({role}) has no string 'content' (got {type(content).__name__})")
        out.append(dict(message))
    return out


def _check_training_messages(messages: Any, where: str) -> tuple[dict[str, str], ...]:
    """A conversation fit for SFT: system only first, at least one assistant turn to learn from."""
    out = [{"role": m["role"], "content": m["content"]} for m in check_messages(messages, CHAT_ROLES, where)]
    if not out:
        raise ValueError(f"{where}: 'messages' is empty")
    for index, message in enumerate(out):
        if message["role"] == "system" and index != 0:
            raise ValueError(f"{where}: messages[{index}] is a system message; only the first message may be one")
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError(f"{where}: no assistant message, so nothing to learn from this conversation")
    return tuple(out)


_CHAT_LINE = "a JSON object with a 'messages' list"


def parse_chat_line(text: str, line: int = 0, source: str = "<memory>") -> ChatExample:
    """Validate one JSONL line into a ChatExample (errors name `source:line`)."""
    return _chat_example(parse_json_object(text, f"{source}:{line}", _CHAT_LINE), line, source)


def _chat_example(record: dict, line: int, source: str) -> ChatExample:
    where = f"{source}:{line}"
    if "messages" not in record:
        raise ValueError(f"{where}: missing 'messages' (keys: {', '.join(sorted(record)) or 'none'})")
    return ChatExample(_check_training_messages(record["messages"], where), source, line)


def read_chat_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[ChatExample]:
    """All conversations of a JSONL file, validated; the first bad line raises with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chat data file {path} does not exist")
    examples: list[ChatExample] = []
    for number, record in jsonl_objects(path, _CHAT_LINE, MAX_LINE_BYTES):
        examples.append(_chat_example(record, number, str(path)))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ValueError(f"{path}: no conversations found")
    return examples


def write_chat_jsonl(conversations: Iterable[Sequence[dict[str, str]] | dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write conversations (message lists, or records with 'messages') as JSONL, atomically."""
    lines = []
    for item in conversations:
        record = item if isinstance(item, dict) else {"messages": list(item)}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return write_text_atomically(path, "".join(lines))


# --------------------------------------------------------------------------------------------
# Packing and batching
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PackedRow:
    """Token ids of one or more whole conversations, their 0/1 loss mask and each one's length."""

    ids: tuple[int, ...]
    mask: tuple[int, ...]
    lengths: tuple[int, ...]


def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int,
                  pack: bool = True) -> tuple[list[PackedRow], int]:
    """Rows of at most seq_len + 1 tokens (inputs and shifted targets come from one row).

    `examples` are (ids, mask) pairs. A conversation longer than a row is cut to fit (its tail is
    lost); one whose remaining part has no masked token is dropped. Returns (rows, number cut).
    With `pack=False` each conversation gets a row of its own.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    capacity = seq_len + 1
    items, cut = [], 0
    for ids, mask in examples:
        if len(ids) != len(mask):
            raise ValueError(f"ids and mask differ in length ({len(ids)} vs {len(mask)})")
        if len(ids) > capacity:
            ids, mask, cut = ids[:capacity], mask[:capacity], cut + 1
        if sum(mask[1:]) == 0:  # the first token is never a target
            continue
        items.append((tuple(ids), tuple(mask)))
    if not pack:
        return [PackedRow(ids, mask, (len(ids),)) for ids, mask in items], cut
    # First-fit decreasing over remaining space; bins kept sorted by index for determinism.
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    bins: list[list[int]] = []
    space: list[int] = []
    for i in order:
        size = len(items[i][0])
        for b, free in enumerate(space):
            if free >= size:
                bins[b].append(i)
                space[b] -= size
                break
        else:
            bins.append([i])
            space.append(capacity - size)
    rows = []
    for members in bins:
        members.sort()  # keep the data's own order inside a row
        ids = tuple(t for i in members for t in items[i][0])
        mask = tuple(t for i in members for t in items[i][1])
        rows.append(PackedRow(ids, mask, tuple(len(items[i][0]) for i in members)))
    return rows, cut


def collate(rows: Sequence[PackedRow], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs [B, T], targets [B, T], segments [B, T]) for next-token training.

    Row r gives inputs ids[:-1] and targets ids[1:], with IGNORE_INDEX wherever the target token
    is not an assistant token, and right padding up to the longest row. `segments` numbers the
    conversations of each row from 1 (0 = padding): passed to the model as `segment_ids`, it keeps
    each conversation's attention to itself, so packing changes nothing but speed.
    """
    width = max(len(row.ids) for row in rows) - 1
    inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids = torch.tensor(row.ids, dtype=torch.long)
        keep = torch.tensor(row.mask[1:], dtype=torch.bool)
        n = len(row.ids) - 1
        inputs[r, :n] = ids[:-1]
        targets[r, :n] = torch.where(keep, ids[1:], torch.full_like(ids[1:], IGNORE_INDEX))
        segments[r, :n] = torch.repeat_interleave(torch.arange(1, len(row.lengths) + 1), torch.tensor(row.lengths))[:n]
    return inputs, targets, segments


class ChatBatches:
    """Endless micro-batches of packed rows, reshuffled each epoch from (seed, epoch); resumable."""

    def __init__(self, rows: Sequence[PackedRow], batch_size: int, pad_id: int, seed: int = 0) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if not rows:
            raise ValueError("no training rows (every conversation was empty or dropped)")
        self.rows, self.batch_size, self.pad_id, self.seed = list(rows), batch_size, pad_id, seed
        self.epoch = 0
        self.position = 0
        self._order = self._plan()

    def _plan(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = self._plan()

    def next_rows(self) -> list[PackedRow]:
        picked: list[PackedRow] = []
        while len(picked) < self.batch_size:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._plan()
            take = self._order[self.position:self.position + self.batch_size - len(picked)]
            picked.extend(self.rows[int(i)] for i in take)
            self.position += len(take)
        return picked

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        while True:
            yield collate(self.next_rows(), self.pad_id)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return collate(self.next_rows(), self.pad_id)

    @property
    def epoch_progress(self) -> float:
        return self.epoch + self.position / max(1, len(self.rows))
