"""Preference examples -> token ids -> padded batches, shared by the reward-model and DPO-family loops.

    encoded, skipped = encode_pairs(tokenizer, pairs, max_length)      # EncodedPair per usable pair
    batch = collate_pairs(encoded[:8], pad_id)                          # chosen rows, then rejected rows
    logps, counts, _ = completion_logps(model, batch)                   # [2B] summed log-probs, token counts

Tokens come from `lmforge.tokenizer.completion` (TRL's split of prompt and completion). A pair whose
prompt leaves no room in `max_length` is skipped and counted ("prompt longer than the context");
a completion that does not fit is cut at the end (counted as "truncated"), as TRL's `keep_start`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmforge.data.preference import PreferencePair, UnpairedExample
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.completion import encode_completion, encode_pair
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.losses import IGNORE_INDEX

__all__ = ["EncodedExample", "EncodedPair", "SequenceBatch", "collate_examples", "collate_pairs", "completion_logps",
           "encode_examples", "encode_pairs"]

PROMPT_TOO_LONG = "prompt longer than the context"
EMPTY_PROMPT = "empty prompt (no token to condition on)"


@dataclass(frozen=True)
class EncodedPair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    index: int  # position in the list given to encode_pairs (ties cached reference log-probs to pairs)


@dataclass(frozen=True)
class EncodedExample:
    prompt: tuple[int, ...]
    completion: tuple[int, ...]
    label: bool
    index: int


@dataclass(frozen=True)
class SequenceBatch:
    """Right-padded prompt+completion rows and their completion targets (IGNORE_INDEX elsewhere)."""

    ids: torch.Tensor  # [N, T] full sequences (reward models read these)
    targets: torch.Tensor  # [N, T-1] the next token where it belongs to the completion
    indices: torch.Tensor  # [N] the examples' `index`
    prompt_lengths: torch.Tensor  # [N]

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return SequenceBatch(self.ids.to(device), self.targets.to(device), self.indices.to(device),
                             self.prompt_lengths.to(device))


def _fit(prompt: list[int], completions: Sequence[list[int]], max_length: int, bos_id: int | None,
         skipped: Counter) -> tuple[list[int], list[list[int]]] | None:
    if not prompt:
        if bos_id is None:
            skipped[EMPTY_PROMPT] += 1
            return None
        prompt = [bos_id]
    room = max_length - len(prompt)
    if room < 1:
        skipped[PROMPT_TOO_LONG] += 1
        return None
    if any(len(c) > room for c in completions):
        skipped["truncated"] += 1
    return prompt, [c[:room] for c in completions]


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[PreferencePair], max_length: int
                 ) -> tuple[list[EncodedPair], Counter]:
    """Token ids of every usable pair (at most `max_length` tokens per sequence) and the counts of
    pairs skipped or cut, by reason. Errors name the pair's file and line."""
    encoded, skipped = [], Counter()
    for index, pair in enumerate(pairs):
        try:
            prompt, chosen, rejected = encode_pair(tokenizer, pair.prompt, pair.chosen, pair.rejected)
        except ValueError as error:
            raise ValueError(f"{pair.where}: {error}") from None
        fitted = _fit(prompt, [chosen, rejected], max_length, tokenizer.bos_id, skipped)
        if fitted is None:
            continue
        prompt, (chosen, rejected) = fitted
        if chosen == rejected:
            skipped["chosen identical to rejected after truncation"] += 1
            continue
        encoded.append(EncodedPair(tuple(prompt), tuple(chosen), tuple(rejected), index))
    return encoded, skipped


def encode_examples(tokenizer: Tokenizer, examples: Sequence[UnpairedExample], max_length: int
                    ) -> tuple[list[EncodedExample], Counter]:
    """`encode_pairs` for unpaired (KTO) examples."""
    encoded, skipped = [], Counter()
    for index, example in enumerate(examples):
        try:
            prompt, completion = encode_completion(tokenizer, example.prompt, example.completion)
        except ValueError as error:
            raise ValueError(f"{example.where}: {error}") from None
        fitted = _fit(prompt, [completion], max_length, tokenizer.bos_id, skipped)
        if fitted is not None:
            encoded.append(EncodedExample(tuple(fitted[0]), tuple(fitted[1][0]), example.label, index))
    return encoded, skipped


def _collate(rows: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], indices: Sequence[int], pad_id: int
             ) -> SequenceBatch:
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width - 1), IGNORE_INDEX, dtype=torch.long)
    for r, (prompt, completion) in enumerate(rows):
        whole = torch.tensor(prompt + completion, dtype=torch.long)
        ids[r, :len(whole)] = whole
        targets[r, len(prompt) - 1:len(whole) - 1] = whole[len(prompt):]
    return SequenceBatch(ids, targets, torch.tensor(list(indices), dtype=torch.long),
                         torch.tensor([len(p) for p, _ in rows], dtype=torch.long))


def collate_pairs(pairs: Sequence[EncodedPair], pad_id: int) -> SequenceBatch:
    """One batch of 2B rows: the B chosen sequences, then the B rejected ones (one forward for both)."""
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    return _collate(rows, [p.index for p in pairs] * 2, pad_id)


def collate_examples(examples: Sequence[EncodedExample], pad_id: int) -> SequenceBatch:
    return _collate([(e.prompt, e.completion) for e in examples], [e.index for e in examples], pad_id)


def completion_logps(model: Transformer, batch: SequenceBatch, prompt_too: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """([N] float32 summed log-probability of each row's completion, [N] its token count, and with
    `prompt_too` [N] the summed log-probability of the prompt's tokens after the first (ORPO's NLL
    term covers the whole sequence), else None).

    The output head runs only at the positions scored (a prompt is usually much longer than its
    answer, and the vocabulary is large). Right padding needs no mask: causal attention keeps it
    from the real tokens."""
    hidden = model(batch.ids[:, :-1], head=False)  # [N, T-1, D]
    completion = batch.targets != IGNORE_INDEX  # [N, T-1]
    positions = torch.arange(completion.shape[1], device=completion.device)
    prompt = positions[None, :] < (batch.prompt_lengths[:, None] - 1) if prompt_too else torch.zeros_like(completion)
    scored = completion | prompt
    targets = torch.where(completion, batch.targets, batch.ids[:, 1:])[scored]  # [M]
    logits = model.head_logits(hidden[scored]).float()  # [M, V]
    token_logps = -F.cross_entropy(logits, targets, reduction="none")  # [M]
    rows = scored.nonzero()[:, 0]
    in_completion = completion[scored]

    def row_sums(keep: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(batch.ids), dtype=torch.float32, device=logits.device).index_add(
            0, rows[keep], token_logps[keep])

    return row_sums(in_completion), completion.sum(dim=1), row_sums(~in_completion) if prompt_too else None
