"""Prompts for reinforcement learning, in the JSONL layout TRL's online trainers read.

One JSON object per line with a `prompt` (text, or a list of chat messages not ending with an
assistant turn); every other field is kept as a column for the reward functions (e.g. `answer`):

    {"prompt": "The capital of France is", "answer": "Paris"}
    {"prompt": [{"role": "user", "content": "What is 6 * 7?"}], "answer": "42"}

A malformed line is a `ValueError` naming the file, the line and the field, raised while reading.
`task_prompts` gives the same records for a generated task (`lmforge.data.synthetic`): the task's
chat prompt and its `answer`. `PromptOrder` serves records in a seeded order per epoch and
resumes from its state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.data.chat import CHAT_ROLES, check_messages
from lmforge.data.readers import jsonl_objects
from lmforge.data.synthetic import make_items

__all__ = ["PromptOrder", "PromptRecord", "read_prompt_jsonl", "task_prompts"]


@dataclass(frozen=True)
class PromptRecord:
    prompt: str | tuple[dict[str, str], ...]  # text, or chat messages
    columns: dict[str, Any] = field(default_factory=dict)  # the record's other fields
    source: str = "<memory>"
    line: int = 0

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, tuple)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def parse_prompt_record(record: dict[str, Any], source: str = "<memory>", line: int = 0) -> PromptRecord:
    where = f"{source}:{line}"
    if "prompt" not in record:
        raise ValueError(f"{where}: missing 'prompt' (keys: {', '.join(sorted(record)) or 'none'})")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: 'prompt' is empty")
        value: str | tuple[dict[str, str], ...] = prompt
    elif isinstance(prompt, list):
        messages = check_messages(prompt, CHAT_ROLES, f"{where}: 'prompt'")
        if not messages:
            raise ValueError(f"{where}: 'prompt' has no messages")
        if messages[-1]["role"] == "assistant":
            raise ValueError(f"{where}: 'prompt' ends with an assistant message; the model writes that turn")
        value = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    else:
        raise ValueError(f"{where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
    return PromptRecord(value, {k: v for k, v in record.items() if k != "prompt"}, source, line)


def read_prompt_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[PromptRecord]:
    """Every record of a prompt file, checked; the first malformed line raises with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    records = []
    for number, record in jsonl_objects(path, "a JSON object with a 'prompt'"):
        records.append(parse_prompt_record(record, str(path), number))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise ValueError(f"{path}: no prompts")
    return records


def task_prompts(task: str, n: int, split: str = "train", seed: int = 0) -> list[PromptRecord]:
    """`n` questions of a generated task as prompt records (chat prompt, `answer` column)."""
    return [PromptRecord(tuple(item.prompt_messages()), {"answer": item.answer}, f"task:{task}:{split}", index + 1)
            for index, item in enumerate(make_items(task, n, split, seed))]


class PromptOrder:
    """Indices of `n` records in a seeded random order, reshuffled every epoch; resumable."""

    def __init__(self, n: int, seed: int = 0) -> None:
        if n < 1:
            raise ValueError("no prompts to draw from")
        self.n, self.seed = n, seed
        self.epoch, self.index = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.index])
            self.index += 1
        return out

    @property
    def epoch_progress(self) -> float:
        return self.epoch + self.index / self.n

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("n") != self.n:
            raise ValueError(f"the saved prompt order is over {state.get('n')} prompts; this run has {self.n}")
        self.seed, self.epoch, self.index = int(state["seed"]), int(state["epoch"]), int(state["index"])
        self._order = self._shuffle()
