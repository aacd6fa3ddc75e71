"""One optimizer step's gradients: token-weighted accumulation, clipping, the finite-loss check."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn

from lmforge.train.distributed import DistInfo, agree_any, all_reduce_sum
from lmforge.train.losses import IGNORE_INDEX, token_cross_entropy

# (inputs [B, T], targets [B, T]), or with a third tensor, segment ids [B, T] of packed documents
Batch = tuple[torch.Tensor, ...]


def batch_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's logits for a batch; packed documents (segment ids) attend only within themselves."""
    inputs, _, *segments = batch
    if segments and segments[0] is not None:
        return model(inputs, segment_ids=segments[0])
    return model(inputs)


LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LogitsFn = Callable[[nn.Module, Batch], torch.Tensor]  # (model, batch) -> logits: `batch_logits`, or a family's own


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; no checkpoint is written for that state."""


def accumulate_gradients(model: nn.Module, micro_batches: list[Batch], dist: DistInfo, *,
                         loss_fn: LossFn = token_cross_entropy, logits_fn: LogitsFn = batch_logits,
                         precision: contextlib.AbstractContextManager | None = None) -> tuple[float, int]:
    """Forward and backward over the micro-batches of one step, weighting every target token equally.

    Each micro-batch's summed loss is divided by the number of target tokens in the whole step
    (all micro-batches, all ranks), so the gradient is the mean over tokens however they are split
    into micro-batches or processes. DDP/FSDP average gradients over ranks, hence the `world`
    factor. Returns the step's mean loss over all ranks and its global token count. `logits_fn`
    runs the model on a batch (the LSTM's carries its state from one micro-batch to the next).
    """
    local_tokens = sum(int((batch[1] != IGNORE_INDEX).sum()) for batch in micro_batches)
    global_tokens = int(all_reduce_sum([float(local_tokens)], dist)[0])
    if global_tokens == 0:
        raise ValueError("a training step has no target tokens (every target is masked)")
    scale = dist.world / global_tokens
    loss_total = torch.zeros((), dtype=torch.float64, device=micro_batches[0][1].device)  # summed on device: one sync
    for index, batch in enumerate(micro_batches):
        targets = batch[1]
        last = index == len(micro_batches) - 1
        sync = model.no_sync() if (not last and hasattr(model, "no_sync")) else contextlib.nullcontext()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter only on the last micro-batch
            model.set_requires_gradient_sync(last)
        with sync:
            with precision or contextlib.nullcontext():
                logits = logits_fn(model, batch)
            loss_sum, _ = loss_fn(logits, targets)
            (loss_sum * scale).backward()
        loss_total += loss_sum.detach().double()
    loss_all = all_reduce_sum([float(loss_total)], dist)[0]
    return loss_all / global_tokens, global_tokens


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (0 = only measure it); returns the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
        norm = norm.full_tensor()
    return float(norm)


def ensure_finite(loss: float, step: int, dist: DistInfo) -> None:
    """Raise NonFiniteLossError on every rank when the loss is NaN/inf on any rank."""
    if agree_any(not math.isfinite(loss), dist):
        raise NonFiniteLossError(
            f"the training loss became {loss} at step {step}; stopping without saving this state. "
            "Lower the learning rate, enable grad_clip or use float32, then resume from the last checkpoint")
