"""Heads over any family's final hidden states: one number per position (reward models, value heads).

`ScalarHeadModel(base)` puts `score`, an `nn.Linear(dim, 1, bias=False)`, on the final hidden states
of a `Transformer` (Hugging Face's `...ForSequenceClassification` layout with `num_labels: 1`: the
head is named `score`, the backbone keeps its own names, `lmforge.io.hf` saves and loads it):

    rm = ScalarHeadModel(base)
    values = rm(ids)                       # [B, T]: a value per position (PPO's value head)
    rewards = rm.sequence_scores(ids, pad_id)   # [B]: at each row's last non-pad token (a reward model)

`sequence_scores` reads the score where Hugging Face's sequence classifiers do: at the rightmost
token that is not the pad token, so a batch right-padded with `pad_id` gives each row its own score
and `transformers.AutoModelForSequenceClassification` computes the same numbers.

The head wraps `base` without copying it: `ScalarHeadModel(policy)` shares the policy's weights, and
`rm.base(ids)` still gives next-token logits. LoRA goes on `rm.base` (`apply_lora(rm.base, ...)`),
which leaves `score` fully trainable (PEFT's `modules_to_save` for sequence classification).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.core.config import ModelConfig
from lmforge.model.transformer import Transformer

__all__ = ["SCORE_NAME", "ScalarHeadModel", "last_non_pad_index"]

SCORE_NAME = "score"  # Hugging Face's name of the sequence-classification head


def last_non_pad_index(ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """[B] index of the rightmost token of each row that is not `pad_id` (Hugging Face's rule;
    the last position when there is no pad id). A row made only of pad tokens is an error."""
    B, T = ids.shape
    if pad_id is None:
        return torch.full((B,), T - 1, dtype=torch.long, device=ids.device)
    real = ids != pad_id  # [B, T]
    if not bool(real.any(dim=1).all()):
        raise ValueError("a row holds only pad tokens: there is no token to read a score at")
    positions = torch.arange(T, device=ids.device)
    return (positions * real).argmax(dim=1)


class ScalarHeadModel(nn.Module):
    """A transformer with a scalar `score` head: values per position, or one score per sequence."""

    def __init__(self, base: Transformer, score: nn.Linear | None = None, init_std: float = 0.0) -> None:
        """`score` adopts a given head; otherwise a new one is made, zero (`init_std` 0: every score
        starts at 0, the usual value-head start) or normal with that standard deviation."""
        super().__init__()
        if not isinstance(base, Transformer):
            raise ValueError(f"ScalarHeadModel wraps an lmforge Transformer, got {type(base).__name__}")
        self.base = base
        dim = base.config.dim
        if score is None:
            weight = base.embedding.weight
            device = weight.device if weight.device.type != "meta" else torch.device("cpu")
            score = nn.Linear(dim, 1, bias=False, device=device, dtype=weight.dtype)
            with torch.no_grad():
                if init_std > 0:
                    score.weight.normal_(0.0, init_std)
                else:
                    score.weight.zero_()
        if not isinstance(score, nn.Linear) or tuple(score.weight.shape) != (1, dim) or score.bias is not None:
            raise ValueError(f"the score head must be nn.Linear({dim}, 1, bias=False)")
        self.score = score

    @property
    def config(self) -> ModelConfig:
        return self.base.config

    def forward(self, ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] float32 scores of every position (a value head). Right padding needs no mask:
        causal attention keeps it away from real tokens."""
        hidden = self.base(ids, padding_mask=padding_mask, segment_ids=segment_ids, head=False)  # [B, T, D]
        return self.score(hidden).squeeze(-1).float()

    def sequence_scores(self, ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
        """[B] float32 score of each row at its last non-pad token (a reward model)."""
        index = last_non_pad_index(ids, pad_id)
        hidden = self.base(ids, head=False)  # [B, T, D]
        picked = hidden[torch.arange(ids.shape[0], device=ids.device), index]  # [B, D]
        return self.score(picked).squeeze(-1).float()
