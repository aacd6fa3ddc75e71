"""The three language-model families side by side: one question asked of each the same way.

`window_token_losses` gives the next-token loss at every position of token windows for a decoder
(`Transformer`), an LSTM or a T5 model used as a prefix language model (the encoder reads the first
`prefix` tokens, the decoder predicts the rest), so comparisons along the context (per-position
loss, recall of an early key) read the same numbers from each family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.lstm import LSTMLanguageModel
from lmforge.model.t5 import T5ForConditionalGeneration
from lmforge.model.transformer import Transformer

FAMILIES = ("decoder", "lstm", "t5")


def family_of(model: nn.Module) -> str:
    if isinstance(model, Transformer):
        return "decoder"
    if isinstance(model, LSTMLanguageModel):
        return "lstm"
    if isinstance(model, T5ForConditionalGeneration):
        return "t5"
    raise ValueError(f"not a language-model family: {type(model).__name__}")


def prefix_split(seq_len: int) -> int:
    """Tokens a T5 prefix LM reads with its encoder from a window of `seq_len` inputs: the first half."""
    return seq_len // 2


def t5_prefix_batch(model: T5ForConditionalGeneration, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(encoder ids, decoder ids, labels) of windows [N, T+1] for the prefix-LM objective: the
    encoder reads tokens [0, p), the decoder predicts tokens [p, T] after a start token."""
    p = prefix_split(windows.shape[1] - 1)
    labels = windows[:, p:]
    return windows[:, :p], model.shift_right(labels), labels


@torch.no_grad()
def window_token_losses(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Losses [N, T] (nats) of predicting windows[:, t + 1] from windows[:, :t + 1], each window read
    from a fresh context (an empty cache, a zero LSTM state). A T5 prefix LM predicts only
    positions t >= p - 1; its other entries are NaN."""
    family = family_of(model)
    device = next(model.parameters()).device
    windows = windows.to(device)
    N, T = windows.shape[0], windows.shape[1] - 1
    if family == "t5":
        encoder_ids, decoder_ids, labels = t5_prefix_batch(model, windows)
        logits = model(encoder_ids, decoder_ids)
        losses = torch.full((N, T), float("nan"), device=device)
        losses[:, T - labels.shape[1]:] = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
        return losses.cpu()
    logits = model(windows[:, :-1]) if family == "decoder" else model(windows[:, :-1])[0]
    return F.cross_entropy(logits.float().transpose(1, 2), windows[:, 1:], reduction="none").cpu()
