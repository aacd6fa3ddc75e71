"""Preference losses as pure functions of log-probabilities: DPO, IPO, SimPO, ORPO, KTO, and the
Bradley-Terry loss of reward models. No models, no loops.

Each pairwise loss takes per-sequence log-probabilities of the chosen and rejected completions
(summed over completion tokens, or their per-token means where the method uses them) and returns a
`PreferenceLoss`: a loss per pair (the step's loss is their mean) and the implicit rewards that TRL
logs as `rewards/chosen` and `rewards/rejected`. The formulas follow TRL 1.16 (DPOTrainer,
CPOTrainer for SimPO, ORPOTrainer, KTOTrainer); tests compare losses and gradients with TRL itself.

    dpo    -log sigmoid(beta * ((c - c_ref) - (r - r_ref)))            (with label smoothing: cDPO)
    ipo    ((c - c_ref) / |c| - (r - r_ref) / |r| - 1 / (2 beta))^2    (log-ratios per completion token)
    simpo  -log sigmoid(beta * (mean_c - mean_r) - gamma)              (mean log-probs, no reference)
    orpo   nll(chosen) - beta * log sigmoid(log odds(mean_c) - log odds(mean_r))      (no reference)
    kto    desirable:   1 - sigmoid(beta * ((c - c_ref) - kl))
           undesirable: 1 - sigmoid(beta * (kl - (r - r_ref)))          (unpaired; kl a batch estimate)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmforge.train.losses.lm import IGNORE_INDEX

__all__ = ["PreferenceLoss", "bradley_terry_loss", "dpo_loss", "ipo_loss", "kto_loss", "log1mexp", "orpo_loss",
           "sequence_logps", "simpo_loss"]


@dataclass(frozen=True)
class PreferenceLoss:
    losses: torch.Tensor  # [N] one per pair (KTO: per example); the loss is their mean
    chosen_rewards: torch.Tensor  # [Nc] detached implicit rewards (TRL's rewards/chosen)
    rejected_rewards: torch.Tensor  # [Nr]


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the summed log-probability of its target tokens and how many there are.

    logits [B, T, V] (any float dtype; computed in float32), targets [B, T] with `ignore_index` where
    nothing is scored. Returns (logps [B] float32, counts [B] long)."""
    B, T, V = logits.shape
    token_nll = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), ignore_index=ignore_index,
                                reduction="none").view(B, T)
    return -token_nll.sum(dim=1), (targets != ignore_index).sum(dim=1)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> PreferenceLoss:
    """DPO's sigmoid loss on summed log-probabilities; `label_smoothing` > 0 is conservative DPO."""
    chosen_ratio, rejected_ratio = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    margin = beta * (chosen_ratio - rejected_ratio)
    losses = -F.logsigmoid(margin) * (1 - label_smoothing) - F.logsigmoid(-margin) * label_smoothing
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def ipo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
             beta: float) -> PreferenceLoss:
    """IPO's squared loss on log-ratios per completion token (TRL's length normalisation); `beta` is
    the paper's tau."""
    chosen_ratio, rejected_ratio = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
    losses = (delta - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def simpo_loss(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, beta: float, gamma: float,
               label_smoothing: float = 0.0) -> PreferenceLoss:
    """SimPO: mean log-probabilities (length-normalised), a target margin `gamma`, no reference."""
    margin = beta * (chosen_mean_logps - rejected_mean_logps) - gamma
    losses = -F.logsigmoid(margin) * (1 - label_smoothing) - F.logsigmoid(-margin) * label_smoothing
    return PreferenceLoss(losses, beta * chosen_mean_logps.detach(), beta * rejected_mean_logps.detach())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler's split at -log 2)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, chosen_nll: torch.Tensor,
              beta: float) -> PreferenceLoss:
    """ORPO: the chosen completions' NLL (a scalar: mean over their tokens) minus beta times the log
    sigmoid of the log odds ratio of mean log-probabilities; no reference."""
    chosen, rejected = chosen_mean_logps.float(), rejected_mean_logps.float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    losses = chosen_nll - beta * F.logsigmoid(log_odds)
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def kto_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, kl: torch.Tensor, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> PreferenceLoss:
    """KTO on unpaired examples: `chosen_*` are the desirable ones in the batch, `rejected_*` the
    undesirable ones (either may be empty); `kl` is the detached batch estimate of KL(policy || ref),
    clamped at zero (TRL: log-ratio of mismatched prompt/completion pairs)."""
    kl = kl.detach().clamp(min=0)
    chosen_ratio, rejected_ratio = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    chosen_losses = 1 - torch.sigmoid(beta * (chosen_ratio - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - rejected_ratio))
    losses = torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses))
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: torch.Tensor | None = None,
                       center_coefficient: float = 0.0) -> torch.Tensor:
    """Per pair -log sigmoid(s_chosen - s_rejected - margin) (TRL's RewardTrainer), plus
    `center_coefficient` * (s_chosen + s_rejected)^2, which keeps scores centred on zero."""
    difference = chosen_scores - rejected_scores - (margin if margin is not None else 0.0)
    losses = -F.logsigmoid(difference)
    if center_coefficient:
        losses = losses + center_coefficient * (chosen_scores + rejected_scores) ** 2
    return losses
