"""Log-likelihood scoring: how probable a model finds given continuations of given contexts.

Two primitives serve every likelihood-based evaluation:

* `score_continuations(model, [(context_ids, continuation_ids), ...])` -> per request the summed
  log-probability of the continuation, its token count and whether greedy decoding would have
  produced it (multiple-choice tasks, lm-evaluation-harness `loglikelihood`).
* `score_rolling(model, [document_ids, ...])` -> the log-likelihood of whole documents of any
  length, split into windows that respect the model context (perplexity, bits per byte,
  lm-evaluation-harness `loglikelihood_rolling`). Windows are just (context, continuation)
  requests, so both share one batched code path.

Requests run cache-free through `model(ids, padding_mask=...)` in right-padded batches, longest
first so that padding stays small and an out-of-memory failure shows up on the first batch.
Identical requests are scored once. Log-softmax is computed in float32 whatever the model dtype,
and only at the positions that are scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmforge.model.transformer import Transformer

__all__ = ["ContinuationScore", "perplexity", "rolling_windows", "score_continuations", "score_rolling"]

ProgressFn = Callable[[int], None]  # called with the number of requests just finished


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float  # sum over continuation tokens of log p(token | everything before it)
    n_tokens: int  # continuation tokens scored
    is_greedy: bool  # every scored token was the model's argmax choice

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.n_tokens if self.n_tokens else 0.0


def _check_ids(ids: Sequence[int], vocab_size: int, what: str) -> list[int]:
    out = [int(t) for t in ids]
    for token in out:
        if not 0 <= token < vocab_size:
            raise ValueError(f"{what}: token id {token} is outside the vocabulary [0, {vocab_size})")
    return out


@torch.inference_mode()
def score_continuations(
    model: Transformer,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 32,
    max_batch_tokens: int = 8192,
    max_len: int | None = None,
    progress: ProgressFn | None = None,
) -> list[ContinuationScore]:
    """Score each (context ids, continuation ids) pair; results come back in request order.

    The context must hold at least one token (prepend BOS or an end-of-text token to score a
    continuation from nothing). A context too long for the model is truncated from the left, as
    lm-evaluation-harness does; a continuation longer than the context window is an error.
    `max_batch_tokens` bounds batch rows x padded length (the logits tensor is that times the
    vocabulary); a single longer request still runs alone.
    """
    if batch_size < 1 or max_batch_tokens < 1:
        raise ValueError("batch_size and max_batch_tokens must be positive")
    config = model.config
    window = min(max_len or config.max_seq_len, config.max_seq_len)
    # Unique requests: (context + continuation after truncation, continuation length) -> slot.
    unique: dict[tuple[tuple[int, ...], int], int] = {}
    items: list[tuple[tuple[int, ...], list[int], int]] = []  # (inputs, targets, duplicates)
    slot_of_request: list[int] = []
    for index, (context, continuation) in enumerate(requests):
        context = _check_ids(context, config.vocab_size, f"request {index} context")
        continuation = _check_ids(continuation, config.vocab_size, f"request {index} continuation")
        if not context:
            raise ValueError(f"request {index} has an empty context; prepend a BOS or end-of-text token")
        if not continuation:
            raise ValueError(f"request {index} has an empty continuation; there is nothing to score")
        if len(continuation) > window:
            raise ValueError(f"request {index}: a continuation of {len(continuation)} tokens does not fit "
                             f"the {window}-token context window")
        whole = tuple((context + continuation)[-(window + 1):])
        key = (whole, len(continuation))  # the full sequence: inputs and targets
        slot = unique.get(key)
        if slot is None:
            slot = unique[key] = len(items)
            items.append((whole[:-1], continuation, 0))
        inputs, targets, count = items[slot]
        items[slot] = (inputs, targets, count + 1)
        slot_of_request.append(slot)

    device = model.lm_head.weight.device
    results: list[ContinuationScore | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    start = 0
    while start < len(order):
        longest = len(items[order[start]][0])
        rows = max(1, min(batch_size, max_batch_tokens // longest))
        batch = order[start:start + rows]
        start += len(batch)
        _score_batch(model, [items[i] for i in batch], device, results, batch)
        if progress is not None:
            progress(sum(items[i][2] for i in batch))
    return [results[slot] for slot in slot_of_request]  # type: ignore[misc]


def _score_batch(model: Transformer, batch: list[tuple[tuple[int, ...], list[int], int]], device: torch.device,
                 results: list[ContinuationScore | None], slots: list[int]) -> None:
    lengths = [len(inputs) for inputs, _, _ in batch]
    T = max(lengths)
    ids = torch.zeros((len(batch), T), dtype=torch.long, device=device)
    for row, (inputs, _, _) in enumerate(batch):
        ids[row, :len(inputs)] = torch.tensor(inputs, dtype=torch.long)
    padding_mask = None
    if any(n != T for n in lengths):
        padding_mask = torch.arange(T, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]  # [B, T]
    logits = model(ids, padding_mask=padding_mask)  # [B, T, V]
    # The last n inputs of a row predict its n continuation tokens.
    rows, positions, targets, owner = [], [], [], []
    for row, (inputs, continuation, _) in enumerate(batch):
        n = len(continuation)
        rows += [row] * n
        positions += range(len(inputs) - n, len(inputs))
        targets += continuation
        owner += [row] * n
    rows_t = torch.tensor(rows, device=device)
    positions_t = torch.tensor(positions, device=device)
    targets_t = torch.tensor(targets, device=device)
    token_logprobs = torch.empty(len(targets), dtype=torch.float32, device=device)
    greedy = torch.empty(len(targets), dtype=torch.bool, device=device)
    chunk = 1024  # bounds the float32 copy of the selected logits
    for begin in range(0, len(targets), chunk):
        end = begin + chunk
        selected = logits[rows_t[begin:end], positions_t[begin:end]].float()  # [N, V]
        log_probs = torch.log_softmax(selected, dim=-1)
        token_logprobs[begin:end] = log_probs.gather(1, targets_t[begin:end, None])[:, 0]
        greedy[begin:end] = selected.argmax(dim=-1) == targets_t[begin:end]
    owner_t = torch.tensor(owner, device=device)
    sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, owner_t, token_logprobs.double())
    misses = torch.zeros(len(batch), dtype=torch.long, device=device).index_add_(0, owner_t, (~greedy).long())
    for row, (slot, total, missed) in enumerate(zip(slots, sums.tolist(), misses.tolist())):  # one host sync
        results[slot] = ContinuationScore(total, len(batch[row][1]), missed == 0)


def rolling_windows(ids: Sequence[int], max_len: int, stride: int | None = None,
                    prefix_id: int | None = None) -> list[tuple[list[int], list[int]]]:
    """Split a document into (context, continuation) requests that score every token exactly once.

    With `prefix_id` (BOS or end-of-text) the first token is scored given that prefix; without
    it the first token has nothing to condition on and is not scored. Each window feeds at most
    `max_len` tokens to the model and scores the next `stride` tokens (default `max_len`: the
    disjoint windows of lm-evaluation-harness); a smaller stride gives every scored token at
    least `max_len - stride` tokens of context, at more compute.
    """
    stride = stride or max_len
    if max_len < 1 or not 1 <= stride <= max_len:
        raise ValueError(f"need 1 <= stride ({stride}) <= max_len ({max_len})")
    tokens = ([prefix_id] if prefix_id is not None else []) + [int(t) for t in ids]
    windows = []
    position = 1  # next token to score; token 0 (prefix or first token) is context only
    while position < len(tokens):
        end = min(position + stride, len(tokens))
        context_start = max(0, end - (max_len + 1))
        windows.append((tokens[context_start:position], tokens[position:end]))
        position = end
    return windows


def score_rolling(
    model: Transformer,
    documents: Sequence[Sequence[int]],
    *,
    prefix_id: int | None = None,
    max_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    max_batch_tokens: int = 8192,
    progress: ProgressFn | None = None,
) -> list[ContinuationScore]:
    """Total log-likelihood of each document (see `rolling_windows`), all windows batched together.

    `progress` counts windows. A document with nothing to score gets ContinuationScore(0, 0, True).
    """
    window = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
    requests, owner = [], []
    for index, doc in enumerate(documents):
        for request in rolling_windows(doc, window, stride, prefix_id):
            requests.append(request)
            owner.append(index)
    scores = score_continuations(model, requests, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                 max_len=window, progress=progress)
    totals = [[0.0, 0, True] for _ in documents]
    for index, score in zip(owner, scores):
        total = totals[index]
        total[0] += score.logprob
        total[1] += score.n_tokens
        total[2] = total[2] and score.is_greedy
    return [ContinuationScore(float(lp), int(n), bool(g)) for lp, n, g in totals]


def perplexity(score: ContinuationScore) -> float:
    """exp(mean negative log-likelihood per token)."""
    return math.exp(-score.mean_logprob) if score.n_tokens else float("nan")
