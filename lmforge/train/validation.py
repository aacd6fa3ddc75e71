"""Held-out loss and bits per byte during training, sample generations for the log, and task scores."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.core.progress import ProgressDisplay
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.distributed import DistInfo, all_reduce_max, all_reduce_sum
from lmforge.train.losses import IGNORE_INDEX, bits_per_byte, token_cross_entropy
from lmforge.train.metrics import MetricsLog
from lmforge.train.step import Batch, LogitsFn, LossFn, batch_logits


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean nats per target token
    bpb: float  # bits per UTF-8 byte
    tokens: int
    seconds: float


@torch.no_grad()
def validation_loss(model: nn.Module, batches: Iterable[Batch], token_bytes: torch.Tensor, dist: DistInfo, *,
             precision: contextlib.AbstractContextManager | None = None, loss_fn: LossFn = token_cross_entropy,
             logits_fn: LogitsFn = batch_logits) -> EvalResult:
    """Loss and bits per byte over every batch given (each rank passes its own share).

    Ranks may hold different numbers of batches; the shorter ones run throw-away forwards so that
    sharded (FSDP) models, whose forward is a collective, never wait on each other.
    """
    started = time.perf_counter()
    batches = list(batches)
    rounds = all_reduce_max(len(batches), dist)
    was_training = model.training
    model.eval()
    loss_sum, tokens, n_bytes = 0.0, 0, 0
    for index in range(rounds):
        real = index < len(batches)
        batch = batches[index] if real else batches[0] if batches else (torch.zeros(1, 1, dtype=torch.long),) * 2
        targets = batch[1]
        with precision or contextlib.nullcontext():
            logits = logits_fn(model, batch)
        if not real:
            continue
        batch_loss, count = loss_fn(logits, targets)
        loss_sum += float(batch_loss)
        tokens += int(count)
        valid = targets[targets != IGNORE_INDEX]
        n_bytes += int(token_bytes[valid.cpu()].sum())
    model.train(was_training)
    loss_sum, tokens, n_bytes = all_reduce_sum([loss_sum, float(tokens), float(n_bytes)], dist)
    return EvalResult(loss_sum / max(tokens, 1), bits_per_byte(loss_sum, int(n_bytes)), int(tokens), time.perf_counter() - started)


def sample_text(model: Transformer, tokenizer: Tokenizer, prompts: list[str], *, max_new_tokens: int,
                temperature: float = 0.8, top_k: int | None = 40, seed: int = 0) -> list[str]:
    """Completions of `prompts` from the current weights (model left in train mode afterwards)."""
    from lmforge.infer.engine import generate

    was_training = model.training
    model.eval()
    try:
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, seed=seed)
    finally:
        model.train(was_training)


def score_task(score: Callable[[Transformer, Tokenizer, str], Mapping[str, float]], model: Transformer,
               tokenizer: Tokenizer, label: str, metrics: MetricsLog, display: ProgressDisplay, step: int,
               tokens: int) -> dict[str, float]:
    """A task score of the model ("before" or "after" training) from a `score` function the caller
    hands in (the train layer cannot import eval), logged as `{metric}_{label}` and shown."""
    started = time.perf_counter()
    scores = dict(score(model, tokenizer, label))
    seconds = time.perf_counter() - started
    metrics.log(step=step, tokens=tokens, **{f"{name}_{label}": value for name, value in scores.items()},
                score_s=round(seconds, 1))
    shown = ", ".join(f"{name} {value:.1%}" if isinstance(value, float) else f"{name} {value}"
                      for name, value in scores.items())
    display.message(f"task score {label} training: {shown} ({seconds:.0f}s)")
    return scores
