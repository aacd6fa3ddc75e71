"""Preference data in the JSONL formats Hugging Face TRL uses, so existing data sets work unchanged.

One JSON object per line, in any of TRL's layouts (the whole file in one layout):

    standard            {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    conversational      {"prompt": [{"role": "user", "content": "Sky colour?"}],
                         "chosen": [{"role": "assistant", "content": "Blue."}],
                         "rejected": [{"role": "assistant", "content": "Green."}]}
    implicit prompt     {"chosen": "The sky is blue.", "rejected": "The sky is green."}   (strings or
                        message lists: the shared beginning becomes the prompt, as TRL's extract_prompt)
    unpaired (KTO)      {"prompt": ..., "completion": ..., "label": true}

Conversational records are rendered later by the model's chat template through the one chat-format
function (`lmforge.tokenizer.chat.render_conversation`, via `lmforge.tokenizer.completion`); this
module reads, checks and writes records and never sees tokens.

A malformed line (not JSON, a missing key, a wrong type, a bad role, string and message-list fields
mixed) is a `ValueError` naming the file, the line and the field, raised while reading, before
anything is trained: no run ever starts on a half-read file. Lines that are well formed but carry no
preference signal (an empty completion, chosen identical to rejected, no shared prompt to split off)
are skipped and counted by reason in `PreferenceData.skipped`.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from lmforge.core.files import write_text_atomically
from lmforge.data.chat import CHAT_ROLES, check_messages
from lmforge.data.readers import jsonl_objects

__all__ = ["Content", "PreferenceData", "PreferencePair", "SkippedRecord", "UnpairedExample", "content_text",
           "is_conversational", "parse_preference_record", "read_preference_jsonl", "split_shared_prefix", "unpair",
           "write_preference_jsonl"]

Messages = tuple[dict[str, str], ...]
Content = Union[str, Messages]  # plain text, or chat messages


def is_conversational(content: Content) -> bool:
    return isinstance(content, tuple)


def content_text(content: Content) -> str:
    """The text a completion carries (message contents joined): for judges and rule checks."""
    return content if isinstance(content, str) else "\n".join(m["content"] for m in content)


class _Record:
    """Where a record came from (file:line) and whether it is chat messages."""

    prompt: Content
    source: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def conversational(self) -> bool:
        return is_conversational(self.prompt)


@dataclass(frozen=True)
class PreferencePair(_Record):
    """A prompt, a preferred completion and a dispreferred one, with where it came from."""

    prompt: Content
    chosen: Content
    rejected: Content
    source: str = "<memory>"
    line: int = 0

    def record(self) -> dict[str, Any]:
        """The TRL JSONL record (explicit prompt)."""
        return {key: _plain(getattr(self, key)) for key in ("prompt", "chosen", "rejected")}


@dataclass(frozen=True)
class UnpairedExample(_Record):
    """One completion judged good (`label` True) or bad on its own: KTO's data."""

    prompt: Content
    completion: Content
    label: bool | None  # None: not judged (records read for scoring only)
    source: str = "<memory>"
    line: int = 0

    def record(self) -> dict[str, Any]:
        record = {"prompt": _plain(self.prompt), "completion": _plain(self.completion)}
        return record if self.label is None else record | {"label": self.label}


@dataclass
class PreferenceData:
    """What a file held: paired or unpaired examples (never both), and the skipped lines by reason."""

    pairs: list[PreferencePair] = field(default_factory=list)
    unpaired: list[UnpairedExample] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    @property
    def paired(self) -> bool:
        return bool(self.pairs) or not self.unpaired

    def __len__(self) -> int:
        return len(self.pairs) + len(self.unpaired)

    def describe_skipped(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items())) or "none"

    def hold_out(self, fraction: float, at_most: int, seed: int) -> tuple["PreferenceData", "PreferenceData"]:
        """(kept, held out): a seeded random `fraction` of the examples (at most `at_most`) held out."""
        items: list[Any] = self.pairs or self.unpaired
        n_held = min(at_most, int(len(items) * fraction))
        held = set(random.Random(seed).sample(range(len(items)), n_held))
        kept = [x for i, x in enumerate(items) if i not in held]
        out = [x for i, x in enumerate(items) if i in held]
        key = "pairs" if self.pairs else "unpaired"
        return PreferenceData(**{key: kept}, skipped=self.skipped), PreferenceData(**{key: out})


def _plain(content: Content) -> Any:
    return content if isinstance(content, str) else [dict(m) for m in content]


# --------------------------------------------------------------------------------------------
# One record
# --------------------------------------------------------------------------------------------
class SkippedRecord(Exception):
    """A well-formed record without a usable preference; the message is the reason counted."""


def _content(value: Any, key: str, where: str) -> Content:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        messages = check_messages(value, CHAT_ROLES, f"{where}: {key!r}")
        return tuple({"role": m["role"], "content": m["content"]} for m in messages)
    raise ValueError(f"{where}: {key!r} must be a string or a list of messages, got {type(value).__name__}")


def _is_empty(content: Content) -> bool:
    return not content_text(content).strip()


def split_shared_prefix(chosen: Content, rejected: Content) -> tuple[Content, Content, Content]:
    """(prompt, chosen, rejected) of an implicit-prompt pair: the longest shared beginning (whole
    messages, or characters of a string, a space before the split going to the completions)."""
    limit = min(len(chosen), len(rejected))
    index = next((i for i in range(limit) if chosen[i] != rejected[i]), limit)
    if isinstance(chosen, str) and index > 0 and chosen[index - 1] == " ":
        index -= 1
    return chosen[:index], chosen[index:], rejected[index:]


def _check_kinds(where: str, **fields: Content) -> None:
    kinds = {name: is_conversational(value) for name, value in fields.items()}
    if len(set(kinds.values())) > 1:
        strings = [n for n, conversational in kinds.items() if not conversational]
        lists = [n for n, conversational in kinds.items() if conversational]
        raise ValueError(f"{where}: {', '.join(strings)} {'is a string' if len(strings) == 1 else 'are strings'} but "
                         f"{', '.join(lists)} {'is a message list' if len(lists) == 1 else 'are message lists'}; "
                         "use one format per record")


def _completion(content: Content, key: str, where: str) -> Content:
    if is_conversational(content):
        if not content:
            raise SkippedRecord(f"empty {key}")
        if content[-1]["role"] != "assistant":
            raise ValueError(f"{where}: {key!r} must end with an assistant message, ends with {content[-1]['role']!r}")
    if _is_empty(content):
        raise SkippedRecord(f"empty {key}")
    return content


def parse_preference_record(record: dict[str, Any], source: str = "<memory>", line: int = 0,
                            require_label: bool = True) -> PreferencePair | UnpairedExample:
    """Check one TRL record; ValueError (naming source:line and the field) if malformed, `SkippedRecord`
    if it carries no preference. With `require_label` False, prompt/completion records may come
    without a label (TRL's prompt-completion layout, for scoring)."""
    where = f"{source}:{line}"
    keys = set(record)
    if "completion" in keys or "label" in keys:
        missing = sorted({"prompt", "completion", "label"} - keys - (set() if require_label else {"label"}))
        if missing:
            raise ValueError(f"{where}: an unpaired (KTO) record needs 'prompt', 'completion' and 'label'; missing "
                             f"{', '.join(map(repr, missing))}")
        prompt, completion = _content(record["prompt"], "prompt", where), _content(record["completion"], "completion", where)
        _check_kinds(where, prompt=prompt, completion=completion)
        label = record.get("label")
        if not isinstance(label, bool) and not (label is None and not require_label):
            raise ValueError(f"{where}: 'label' must be true or false, got {label!r}")
        return UnpairedExample(prompt, _completion(completion, "completion", where), label, source, line)
    missing = sorted({"chosen", "rejected"} - keys)
    if missing:
        raise ValueError(f"{where}: missing {', '.join(map(repr, missing))} (a preference record has 'chosen' and "
                         f"'rejected', and 'prompt' unless it is shared; keys: {', '.join(sorted(keys)) or 'none'})")
    chosen, rejected = _content(record["chosen"], "chosen", where), _content(record["rejected"], "rejected", where)
    if "prompt" in keys:
        prompt = _content(record["prompt"], "prompt", where)
        _check_kinds(where, prompt=prompt, chosen=chosen, rejected=rejected)
    else:
        _check_kinds(where, chosen=chosen, rejected=rejected)
        prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
        if not prompt:
            raise SkippedRecord("no shared prompt to split off")
    if is_conversational(prompt) and prompt and prompt[-1]["role"] == "assistant":
        raise ValueError(f"{where}: 'prompt' ends with an assistant message; the completion should hold it")
    chosen, rejected = _completion(chosen, "chosen", where), _completion(rejected, "rejected", where)
    if chosen == rejected:
        raise SkippedRecord("chosen identical to rejected")
    return PreferencePair(prompt, chosen, rejected, source, line)


def read_preference_jsonl(path: str | os.PathLike, limit: int | None = None, require_label: bool = True
                          ) -> PreferenceData:
    """Every record of a preference file, checked; the first malformed line raises with its number,
    so nothing downstream sees part of a file. `require_label`: see `parse_preference_record`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference data file {path} does not exist")
    data = PreferenceData()
    kind_line: tuple[str, int] | None = None
    for number, record in jsonl_objects(path, "a JSON object (a preference record)"):
        try:
            example = parse_preference_record(record, str(path), number, require_label)
        except SkippedRecord as skip:
            data.skipped[str(skip)] += 1
            continue
        kind = "paired" if isinstance(example, PreferencePair) else "unpaired"
        if kind_line is None:
            kind_line = (kind, number)
        elif kind != kind_line[0]:
            raise ValueError(f"{path}:{number}: an {kind} record in a file of {kind_line[0]} records "
                             f"(line {kind_line[1]}); keep one layout per file")
        (data.pairs if kind == "paired" else data.unpaired).append(example)  # type: ignore[arg-type]
        if limit is not None and len(data) >= limit:
            break
    if not len(data):
        raise ValueError(f"{path}: no usable preference records (skipped: {data.describe_skipped()})")
    return data


def unpair(pairs: Iterable[PreferencePair]) -> list[UnpairedExample]:
    """Pairs as KTO examples: the chosen completion labelled good, the rejected one bad (TRL's
    unpair_preference_dataset)."""
    out = []
    for pair in pairs:
        out.append(UnpairedExample(pair.prompt, pair.chosen, True, pair.source, pair.line))
        out.append(UnpairedExample(pair.prompt, pair.rejected, False, pair.source, pair.line))
    return out


def write_preference_jsonl(examples: Iterable[PreferencePair | UnpairedExample | dict[str, Any]],
                           path: str | os.PathLike) -> Path:
    """Write records as JSONL, atomically (a reader never sees half a file)."""
    lines = [json.dumps(e if isinstance(e, dict) else e.record(), ensure_ascii=False) + "\n" for e in examples]
    return write_text_atomically(path, "".join(lines))
