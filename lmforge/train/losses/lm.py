"""Language-modelling losses: summed next-token cross-entropy and bits per byte."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy (nats) and the number of counted targets.

    logits [B, T, V] (any float dtype; computed in float32), targets [B, T] with `ignore_index` for
    positions that carry no loss. Returning the sum and the count, not the mean, is what makes
    gradient accumulation token-weighted: divide the sum by the tokens of the whole optimizer step.
    """
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=ignore_index, reduction="sum")
    count = (targets != ignore_index).sum()
    return loss_sum, count


def bits_per_byte(loss_sum_nats: float, n_bytes: int) -> float:
    """Total loss in nats over the UTF-8 bytes those tokens stand for, in bits per byte."""
    return loss_sum_nats / math.log(2) / max(1, n_bytes)
