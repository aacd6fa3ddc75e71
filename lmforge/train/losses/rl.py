"""Reinforcement-learning losses and advantages as pure functions of tensors.

Shapes: a batch holds N completions; per-token tensors are [N, T] over the completion positions
(right-padded), with `mask` [N, T] true on the policy's own tokens. Nothing here knows about models,
rollouts or loops (`lmforge.train.rl` is the loop).

    token_logprobs          log pi(token) of the taken tokens from hidden states, in chunks of
                            positions, so the [N x T x vocab] logits never exist at once
    group_advantages        GRPO/REINFORCE: (r - mean of the prompt's group) / std (group, batch or none)
    gae                     PPO: generalised advantage estimation from per-token rewards and values
    whiten                  (x - mean) / std over the masked entries (advantage whitening)
    kl_k1, kl_k3            per-token estimators of KL(pi || pi_ref) from the taken tokens' log-probs
    policy_loss             the clipped surrogate objective (clipping optional), optional k3 KL term,
                            normalised as grpo | bnpo | dr_grpo | dapo
    clip_metrics            TRL's clip_ratio/* statistics of a batch
    value_loss              PPO's clipped value loss

The formulas follow TRL's GRPO trainer (tested against it) and its PPO trainer.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "LOSS_TYPES",
    "PolicyLoss",
    "clip_metrics",
    "gae",
    "group_advantages",
    "kl_k1",
    "kl_k3",
    "masked_mean",
    "policy_loss",
    "token_logprobs",
    "value_loss",
    "whiten",
]

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")
ScaleRewards = Literal["group", "batch", "none"]
STD_EPS = 1e-4  # TRL's: advantages / (std + 1e-4)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is true (0 when nothing is)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# --------------------------------------------------------------------------------------------
# Log-probabilities of the taken tokens, chunked over positions
# --------------------------------------------------------------------------------------------
def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float,
                    softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = hidden @ weight.t()  # [n, V] in the hidden dtype; reduced in float32 at least
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if temperature != 1.0:
        logits = logits / temperature
    normaliser = torch.logsumexp(logits, dim=-1)
    taken = logits.gather(-1, targets[:, None]).squeeze(-1) - normaliser
    entropy = normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return taken, entropy


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, chunk_size: int = 512,
                   temperature: float = 1.0, softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities of `targets`, entropies of the distributions), both shaped like `targets`.

    hidden [..., D] are the final hidden states at the positions that predict `targets` [...];
    weight [V, D] is the output head. Logits are `hidden @ weight.T` (then tanh soft-capping and
    division by the sampling temperature, as the sampler saw them). Positions are processed
    `chunk_size` at a time; under autograd each chunk is recomputed in the backward pass
    (activation checkpointing), so at most [chunk_size x V] logits exist at any moment, forward or
    backward. The entropy is for logging and carries no gradient.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden states {tuple(hidden.shape)} do not match targets {tuple(targets.shape)}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    taken, entropy = [], []
    for start in range(0, flat_targets.numel(), chunk_size):
        args = (flat_hidden[start:start + chunk_size], weight, flat_targets[start:start + chunk_size], temperature, softcap)
        if needs_grad:
            chunk_taken, chunk_entropy = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            chunk_taken, chunk_entropy = _chunk_logprobs(*args)
        taken.append(chunk_taken)
        entropy.append(chunk_entropy.detach())
    if not taken:
        empty = flat_hidden.new_zeros(0, dtype=torch.float32)
        return empty.reshape(targets.shape), empty.reshape(targets.shape)
    return torch.cat(taken).reshape(targets.shape), torch.cat(entropy).reshape(targets.shape)


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, group_size: int, scale: ScaleRewards = "group"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's group-relative advantages and the standard deviation they were scaled by.

    rewards [N] hold consecutive groups of `group_size` completions of the same prompt. Each
    advantage is the reward minus its group's mean, divided by (std + 1e-4) where std is the
    group's (`group`), the whole batch's (`batch`), or not divided at all (`none`: REINFORCE with a
    group-mean baseline, Dr. GRPO). Standard deviations are unbiased, as torch.std. The returned std
    is the group's for `group` and `none` (so groups whose rewards are all equal can be counted)
    and the batch's for `batch`.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be one value per completion, got shape {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of {group_size} (group_size must be >= 2)")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale!r}")
    groups = rewards.view(-1, group_size)
    baseline = groups.mean(dim=1).repeat_interleave(group_size)
    if scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        std = groups.std(dim=1).repeat_interleave(group_size)
    advantages = rewards - baseline
    if scale != "none":
        advantages = advantages / (std + STD_EPS)
    return advantages, std


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded episodes: (advantages, returns), [N, T].

        delta_t = r_t + gamma * V_{t+1} - V_t          (V past the episode's last token is 0)
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V

    Rewards and values outside `mask` are treated as 0, and so are the advantages there.
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask {tuple(mask.shape)} "
                         "must all be [N, T]")
    weights = mask.to(rewards.dtype)
    rewards, values = rewards * weights, values * weights
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * weights[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the entries where `mask` is true (unbiased variance); with
    shift_mean=False the mean is added back (rescaling only, as PPO does for rewards)."""
    weights = mask.to(values.dtype)
    count = weights.sum()
    if count < 2:
        raise ValueError("whitening needs at least two values")
    mean = (values * weights).sum() / count
    variance = (((values - mean) ** 2) * weights).sum() / (count - 1)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    return whitened if shift_mean else whitened + mean


# --------------------------------------------------------------------------------------------
# KL estimators (Schulman's k1 and k3, from samples of the policy)
# --------------------------------------------------------------------------------------------
def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """log pi - log pi_ref per token: unbiased, can be negative."""
    return logps - ref_logps


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 per token: unbiased and never negative."""
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1


# --------------------------------------------------------------------------------------------
# Policy and value losses
# --------------------------------------------------------------------------------------------
class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # scalar, to minimise
    ratio: torch.Tensor  # [N, T] pi / pi_old
    kl: torch.Tensor | None  # [N, T] k3 estimate of KL(pi || pi_ref), when ref_logps are given
    low_clipped: torch.Tensor  # [N, T] bool: ratio < 1 - clip_low with a negative advantage
    high_clipped: torch.Tensor  # [N, T] bool: ratio > 1 + clip_high with a positive advantage


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                clip_low: float | None = 0.2, clip_high: float | None = None, loss_type: LossType = "grpo",
                ref_logps: torch.Tensor | None = None, beta: float = 0.0, kl_ratio_correction: bool = True,
                max_completion_length: int | None = None, num_sequences: int | None = None,
                num_tokens: float | None = None) -> PolicyLoss:
    """The clipped surrogate objective, per token:

        ratio = exp(logps - old_logps)
        loss_t = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + beta * k3_t

    advantages are [N] (one per completion, GRPO) or [N, T] (per token, PPO). clip_low=None turns
    clipping off (REINFORCE / vanilla policy gradient); clip_high=None means clip_high = clip_low.
    The KL term needs ref_logps and beta > 0; with kl_ratio_correction (TRL's default since
    DeepSeek-V3.2) it is multiplied by the ratio, which makes its gradient the unbiased gradient of
    the reverse KL (the ratio is 1 on-policy, but its gradient is not 0). Aggregation over the masked tokens (`loss_type`):

        grpo     mean over completions of each completion's token mean
        bnpo     sum over tokens / number of tokens
        dr_grpo  sum over tokens / (completions * max_completion_length)
        dapo     sum over tokens / num_tokens (the generation batch's tokens per optimizer step)

    num_sequences and num_tokens default to this batch's; give the totals of the optimizer step
    when it is split into micro-batches, so the micro-batch losses add up to the step's loss.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    if logps.shape != old_logps.shape or logps.shape != mask.shape:
        raise ValueError(f"logps {tuple(logps.shape)}, old_logps {tuple(old_logps.shape)} and mask {tuple(mask.shape)} differ")
    weights = mask.to(logps.dtype)
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logps - old_logps)
    unclipped = ratio * advantages
    if clip_low is None:
        per_token = -unclipped
        low_clipped = high_clipped = torch.zeros_like(mask, dtype=torch.bool)
    else:
        high = clip_low if clip_high is None else clip_high
        clipped = torch.clamp(ratio, 1 - clip_low, 1 + high) * advantages
        per_token = -torch.min(unclipped, clipped)
        low_clipped = (ratio < 1 - clip_low) & (advantages < 0)
        high_clipped = (ratio > 1 + high) & (advantages > 0)
    kl = None
    if ref_logps is not None:
        kl = kl_k3(logps, ref_logps)
        if beta:
            per_token = per_token + beta * (kl * ratio if kl_ratio_correction else kl)
    elif beta:
        raise ValueError("beta > 0 needs ref_logps")
    sequences = logps.shape[0] if num_sequences is None else num_sequences
    summed = (per_token * weights).sum()
    if loss_type == "grpo":
        loss = ((per_token * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)).sum() / max(sequences, 1)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type dr_grpo needs max_completion_length")
        loss = summed / (sequences * max_completion_length)
    else:  # bnpo, dapo: token-level
        tokens = weights.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=summed.dtype)
        loss = summed / tokens.clamp(min=1.0)
    return PolicyLoss(loss, ratio, kl, low_clipped, high_clipped)


def clip_metrics(out: PolicyLoss, mask: torch.Tensor) -> dict[str, float]:
    """TRL's clipping statistics of one batch: token means of the low/high/either clipped tokens,
    and the smallest (low) and largest (high) per-completion clipped fractions."""
    weights = mask.to(torch.float32)
    per_completion = weights.sum(-1).clamp(min=1.0)
    low, high = out.low_clipped.float(), out.high_clipped.float()
    return {"clip_ratio/low_mean": float(masked_mean(low, mask)),
            "clip_ratio/low_min": float(((low * weights).sum(-1) / per_completion).min()),
            "clip_ratio/high_mean": float(masked_mean(high, mask)),
            "clip_ratio/high_max": float(((high * weights).sum(-1) / per_completion).max()),
            "clip_ratio/region_mean": float(masked_mean((out.low_clipped | out.high_clipped).float(), mask))}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
               clip_range: float | None = 0.2, num_tokens: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss and the fraction of tokens where clipping chose the loss:

        v_clip = old_values + clip(values - old_values, -clip_range, clip_range)
        loss   = 0.5 * sum(max((values - returns)^2, (v_clip - returns)^2)) / num_tokens

    clip_range=None is the plain squared error. num_tokens defaults to this batch's masked tokens.
    """
    weights = mask.to(values.dtype)
    unclipped = (values - returns) ** 2
    if clip_range is None:
        worst, clipfrac = unclipped, torch.zeros((), dtype=values.dtype)
    else:
        clipped_values = torch.clamp(values, old_values - clip_range, old_values + clip_range)
        clipped = (clipped_values - returns) ** 2
        worst = torch.max(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).to(values.dtype), mask).detach()
    tokens = weights.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=values.dtype)
    return 0.5 * (worst * weights).sum() / tokens.clamp(min=1.0), clipfrac
