"""Reward-model inference: a score for each (prompt, completion), in batches.

    rm, tokenizer, pad_id = load_sequence_classifier("runs/rm/reward_model")
    scores = score_completions(rm, tokenizer, pad_id, prompts, completions)

Prompts and completions are text or chat messages; they are tokenized exactly as the reward model
was trained on them (`lmforge.tokenizer.completion`), and the score is read where Hugging Face's
sequence classifiers read it: at the last token that is not `pad_id`. Used by `lmforge rm score`,
reward-model judges (constitutional feedback, win rates) and RL rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lmforge.model.heads import ScalarHeadModel
from lmforge.tokenizer.completion import encode_completion
from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["score_completions", "score_ids"]

Content = str | Sequence[Mapping[str, Any]]


@torch.no_grad()
def score_ids(model: ScalarHeadModel, sequences: Sequence[Sequence[int]], pad_id: int | None, *, batch_size: int = 16,
              progress: Callable[[int], None] | None = None) -> list[float]:
    """Scores of token sequences, batched longest first (right-padded with `pad_id`)."""
    device = model.score.weight.device
    was_training = model.training
    model.eval()
    out: list[float] = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = len(sequences[batch[0]])
            ids = torch.full((len(batch), width), pad_id if pad_id is not None else 0, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
            if pad_id is None and len(batch) > 1 and len({len(sequences[i]) for i in batch}) > 1:
                raise ValueError("sequences of different lengths need a pad token to be scored together")
            for i, value in zip(batch, model.sequence_scores(ids.to(device), pad_id).tolist()):
                out[i] = value
            if progress is not None:
                progress(len(batch))
    finally:
        model.train(was_training)
    return out


def score_completions(model: ScalarHeadModel, tokenizer: Tokenizer, pad_id: int | None, prompts: Sequence[Content],
                      completions: Sequence[Content], *, batch_size: int = 16, max_length: int | None = None,
                      progress: Callable[[int], None] | None = None) -> list[float]:
    """The reward of each completion of each prompt. A text completion of a chat prompt is taken as
    the assistant's reply. Sequences longer than `max_length` (default: the model context) keep
    their end, where the score is read."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    limit = min(max_length or model.config.max_seq_len, model.config.max_seq_len)
    sequences = []
    for prompt, completion in zip(prompts, completions):
        if not isinstance(prompt, str) and isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        prompt_ids, completion_ids = encode_completion(tokenizer, prompt, completion)
        sequences.append((prompt_ids + completion_ids)[-limit:])
    return score_ids(model, sequences, pad_id, batch_size=batch_size, progress=progress)
