"""Speculative decoding: cheap drafts, verified by the model in one batched forward call.

A drafter proposes the next few tokens of a sequence; the engine feeds the last token and the
drafts through the model at once and keeps drafts for as long as each equals the token the engine
would have chosen anyway at that position (`Engine._accept` picks every token, with the usual
sampling, penalties, constraints and stop rules). Because every kept token is exactly the one
plain decoding would have produced, and the random stream is drawn once per emitted token, the
output is identical to decoding one token at a time, greedy or seeded sampling alike; only the
number of forward calls changes.

- `PromptLookup` (no draft model): finds the most recent earlier occurrence of the sequence's
  last n tokens (n from `max_ngram` down to `min_ngram`) in its own prompt and output, and
  proposes the tokens that followed it. Strong when the output repeats its input (editing code,
  quoting, summarising, extraction), free otherwise: no match, no draft.
- `DraftModel`: a smaller model with the same tokenizer proposes tokens greedily, keeping its own
  KV cache row per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmforge.model.transformer import Transformer


@dataclass
class SpeculationStats:
    """Counts over an engine's life: `accepted / proposed` is the acceptance rate, and
    `emitted / verify_calls` the tokens a verifying forward call yields on average."""

    proposed: int = 0
    accepted: int = 0
    verify_calls: int = 0
    emitted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_call(self) -> float:
        return self.emitted / self.verify_calls if self.verify_calls else 0.0


@dataclass
class _NgramIndex:
    """For each n-gram of a token list, where the tokens after its latest occurrence start."""

    tokens: list[int] = field(default_factory=list)
    after: dict[tuple[int, ...], int] = field(default_factory=dict)


class PromptLookup:
    """Prompt-lookup drafting: continue the latest earlier occurrence of the last n tokens."""

    def __init__(self, num_draft: int = 4, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not (isinstance(num_draft, int) and num_draft >= 1):
            raise ValueError(f"num_draft must be a positive integer, got {num_draft!r}")
        if not (isinstance(min_ngram, int) and isinstance(max_ngram, int) and 1 <= min_ngram <= max_ngram):
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.num_draft, self.max_ngram, self.min_ngram = num_draft, max_ngram, min_ngram
        self._indexes: dict[int, _NgramIndex] = {}

    def propose(self, key: int, tokens: list[int], limit: int) -> list[int]:
        """Up to min(num_draft, limit) tokens likely to follow `tokens` (the whole sequence so far)."""
        index = self._indexes.setdefault(key, _NgramIndex())
        if tokens[:len(index.tokens)] != index.tokens:  # not a continuation: start over
            index.tokens, index.after = [], {}
        for end in range(len(index.tokens), len(tokens)):
            # the n-grams ending just before position `end` are followed by tokens[end:]
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end - n >= 0:
                    index.after[tuple(tokens[end - n:end])] = end
        index.tokens = list(tokens)
        limit = min(limit, self.num_draft)
        if limit <= 0:
            return []
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(tokens) > n:
                start = index.after.get(tuple(tokens[-n:]))
                if start is not None:
                    # What followed the earlier occurrence; when that runs into the present, the
                    # text repeats with period len(tokens) - start, so the draft continues the period.
                    period = len(tokens) - start
                    return [tokens[start + i % period] for i in range(limit)]
        return []

    def forget(self, key: int) -> None:
        self._indexes.pop(key, None)


class DraftModel:
    """Greedy drafts from a smaller model sharing the tokenizer, one KV-cache row per sequence.

    Each sequence's row holds the draft model's keys and values for the tokens it has already
    seen; on every proposal the tokens added since (the accepted ones) are fed first, so rejected
    drafts never need undoing: their cache slots are simply overwritten.
    """

    def __init__(self, model: Transformer, num_draft: int = 4, max_rows: int = 8) -> None:
        if not (isinstance(num_draft, int) and num_draft >= 1):
            raise ValueError(f"num_draft must be a positive integer, got {num_draft!r}")
        self.model, self.num_draft, self.max_rows = model.eval(), num_draft, max_rows
        self.cache = None
        self._rows: dict[int, tuple[int, list[int]]] = {}  # key -> (row, tokens in the row's cache)

    def check_compatible(self, model: Transformer) -> None:
        if self.model.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"the draft model's vocabulary ({self.model.config.vocab_size}) differs from "
                             f"the model's ({model.config.vocab_size}); it must share the tokenizer")

    @torch.inference_mode()
    def propose(self, key: int, tokens: list[int], limit: int) -> list[int]:
        limit = min(limit, self.num_draft, self.model.config.max_seq_len - len(tokens))
        if limit <= 0:
            return []
        needed = len(tokens) + limit
        if self.cache is None or self.cache.max_len < needed:
            grown = self.model.new_cache(self.max_rows, min(self.model.config.max_seq_len, max(256, 2 * needed)))
            self._rows.clear()  # the old rows are dropped; sequences re-feed their tokens once
            self.cache = grown
        if key not in self._rows:
            used = {row for row, _ in self._rows.values()}
            free = next((r for r in range(self.max_rows) if r not in used), None)
            if free is None:
                return []
            self._rows[key] = (free, [])
        row, cached = self._rows[key]
        common = 0
        while common < min(len(cached), len(tokens) - 1) and cached[common] == tokens[common]:
            common += 1
        device = self.model.lm_head.weight.device
        new = torch.tensor([tokens[common:]], device=device)  # at least the last token
        logits = self.model(new, cache=self.cache, starts=[common], first_row=row, last_only=True)
        drafts = [int(logits[0, -1].argmax())]
        position = len(tokens)
        while len(drafts) < limit:
            step = torch.tensor([[drafts[-1]]], device=device)
            logits = self.model(step, cache=self.cache, starts=[position], first_row=row)
            drafts.append(int(logits[0, -1].argmax()))
            position += 1
        # The cache now holds tokens + drafts[:-1]; only `tokens` are certain.
        self._rows[key] = (row, list(tokens))
        return drafts

    def forget(self, key: int) -> None:
        self._rows.pop(key, None)
