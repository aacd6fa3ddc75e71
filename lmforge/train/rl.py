"""Reinforcement learning on one loop: GRPO, REINFORCE and PPO are settings of it.

    policy + prompts + reward functions  ->  checkpoints, adapter/, metrics.jsonl, rl.png, summary.json

One step (`rl_step`), top to bottom:

    1 prompts     the next `prompts_per_step` prompts (TRL's prompt JSONL, or a generated task)
    2 rollouts    `group_size` completions of each, sampled by the KV-cache engine (`train.rollout`) from
                  the policy, or from its inference twin (LoRA merged, bf16) refreshed every step
    3 rewards     every reward function on every completion, checked and weighted (`train.rewards`)
    4 no-grad     log-probabilities of the reference (LoRA: the base weights with the adapter switched
                  off, no second model; full: a frozen copy), of the sampling policy when the batch is
                  used for more than one optimizer step, and PPO's values
    5 advantages GRPO / REINFORCE: (r - mean of the group) / std (`scale_rewards`); PPO: per-token
                  rewards (the score on the last token, minus beta * KL to the reference on every
                  token), GAE, whitening
    6 update      `epochs` passes over the batch, `mini_batches` optimizer steps each, micro-batches of
                  `micro_batch_size` completions: the clipped surrogate (+ beta * k3 KL in the loss for
                  GRPO; + vf_coef * clipped value loss for PPO) from `train.losses.rl`

The algorithms are presets of these settings (any of them can be overridden):

    grpo       group advantages scaled by the group std, clipped ratio (0.2), token-level loss ("dapo", TRL's
               default; "grpo" is the paper's per-completion mean), beta 0
    reinforce  group-mean baseline, no std scaling, no clipping, token-level loss ("dapo"), beta 0,
               one pass: nanochat's RL
    ppo        one completion per prompt, a value head on the policy's hidden states
               (`model.heads.ScalarHeadModel`), KL penalty beta 0.05 in the reward, GAE, whitened
               advantages, 4 passes, clipped policy and value losses

Around the steps: held-out scores through a `score` function handed in (the eval runner's, built by
the CLI; train may not import eval) before training, every `eval_every` steps and at the end;
metrics.jsonl under TRL's names; rl.png (reward, KL and held-out score against steps); atomic
checkpoints with everything an exact resume needs; SIGTERM/SIGINT save and stop. A reward function
that fails stops the run before that step changes anything, so the last checkpoint stays as it was.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import lmforge
from lmforge.core.files import write_text_atomically
from lmforge.core.plotting import save_figure
from lmforge.core.progress import ProgressDisplay
from lmforge.data.prompts import PromptOrder, PromptRecord, read_prompt_jsonl, task_prompts
from lmforge.infer.engine import Engine
from lmforge.io.checkpoint import load_meta
from lmforge.io.registry import load_model
from lmforge.model.heads import ScalarHeadModel
from lmforge.model.lora import adapters_disabled, apply_lora, count_parameters
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.completion import encode_prompt
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.checkpointing import (RunState, checkpoint_if_due, checkpoint_model, find_resume_checkpoint,
                                         restore_model, restore_optimizer, save_lora_outputs, save_training_checkpoint)
from lmforge.train.config import OptimConfig, RecipeConfig, ScheduleConfig
from lmforge.train.distributed import DistInfo, single_process
from lmforge.train.finetune import LoRASettings
from lmforge.train.losses.rl import (clip_metrics, gae, group_advantages, kl_k1, kl_k3, masked_mean, policy_loss,
                                     token_logprobs, value_loss, whiten)
from lmforge.train.metrics import MetricsLog
from lmforge.train.optim import Optimizers, build_optimizer
from lmforge.train.precision import autocast
from lmforge.train.reproducibility import prepare_process
from lmforge.train.rewards import Reward, RewardScores, score_completions
from lmforge.train.rollout import Rollout, RolloutBatch, inference_twin, sample
from lmforge.train.schedule import lr_multiplier
from lmforge.train.signals import StopSignals, TrainClock
from lmforge.train.step import clip_gradients, ensure_finite

Algo = Literal["grpo", "reinforce", "ppo"]
DEFAULT_LR = {"lora": 1e-4, "full": 1e-5}
TaskScorer = Callable[[Transformer, Tokenizer, str], Mapping[str, float]]

# What each algorithm sets when the config leaves a field at None.
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": {"group_size": 8, "epochs": 1, "loss_type": "dapo", "scale_rewards": "group", "clip_range": 0.2, "beta": 0.0},
    "reinforce": {"group_size": 8, "epochs": 1, "loss_type": "dapo", "scale_rewards": "none", "clip_range": 0.0,
                  "beta": 0.0},
    "ppo": {"group_size": 1, "epochs": 4, "loss_type": "bnpo", "scale_rewards": "none", "clip_range": 0.2, "beta": 0.05},
}


@dataclass(frozen=True)
class RLConfig(RecipeConfig):
    model: str = "smollm2-135m-instruct"  # known name, GGUF file, HF folder or lmforge checkpoint
    algo: Algo = "grpo"
    prompts: str | None = None  # prompt JSONL (TRL layout: "prompt" + columns); None: the generated `task`
    task: str = "add"  # generated task whose train questions are the prompts when `prompts` is None
    train_items: int = 2000
    rewards: tuple[str, ...] = ("exact_match",)  # names the caller resolves into functions (see lmforge rl --help)
    reward_weights: tuple[float, ...] = ()  # one per reward; empty: all 1
    out_dir: str = "runs/rl"
    method: Literal["full", "lora"] = "lora"
    lora: LoRASettings = field(default_factory=lambda: LoRASettings(rank=16, alpha=32.0, dropout=0.0))
    # rollouts
    prompts_per_step: int = 4
    group_size: int | None = None  # completions per prompt (grpo/reinforce 8, ppo 1)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    missing_eos_penalty: float | None = None  # subtracted from the reward of completions cut at max_new_tokens
    rollout_batch_size: int = 32  # sequences the engine decodes together
    rollout_dtype: Literal["float32", "bfloat16"] | None = None  # of the sampling copy; None: `dtype`
    # the update
    epochs: int | None = None  # passes over each rollout batch (TRL: num_iterations / num_ppo_epochs)
    mini_batches: int = 1  # optimizer steps per pass
    micro_batch_size: int = 8  # completions per forward and backward
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] | None = None
    scale_rewards: Literal["group", "batch", "none"] | None = None
    clip_range: float | None = None  # epsilon (low side); 0 turns clipping off
    clip_range_high: float | None = None  # DAPO's clip-higher; None: clip_range
    beta: float | None = None  # KL to the reference: + beta * k3 in the loss (grpo/reinforce), - beta * KL in the reward (ppo)
    kl_ratio_correction: bool = True  # weight the loss's KL term by the ratio (TRL's default)
    kl_estimator: Literal["k1", "k3"] = "k1"  # PPO's per-token KL penalty
    kl_target: float | None = None  # PPO: adapt beta so the KL tracks this (Ziegler et al.); None: fixed beta
    kl_horizon: int = 10000
    kl_stop: float | None = None  # PPO: end the run when a rollout's KL (objective/kl) passes this, undoing the
    #                               update that led there, so the kept policy is the last one measured inside it
    track_kl: bool = True  # compute the reference's log-probs to log the KL even when beta is 0
    skip_zero_advantage: bool = True  # no forward/backward for completions whose gradient is 0 (beta 0, not PPO)
    gamma: float = 1.0  # PPO
    lam: float = 0.95
    vf_coef: float = 0.1
    value_clip: float | None = 0.2
    value_lr: float | None = None  # the value head's learning rate; None: 10 x optim.lr
    whiten_rewards: bool = False
    whiten_advantages: bool = True  # PPO
    logprob_chunk: int = 512  # positions per chunk of the output head (the [tokens x vocab] logits never exist whole)
    # length and optimisation
    max_steps: int | None = 100
    time_budget_s: float | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=DEFAULT_LR["lora"], weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="constant", warmup_steps=0))
    grad_clip: float = 1.0
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None
    # held-out scores, logs, checkpoints
    eval_items: int = 200  # held-out items scored (the task's held-out split, or the first of eval_prompts; 0: none)
    eval_prompts: str | None = None  # held-out prompt JSONL, scored by the mean of eval_rewards over greedy completions
    eval_rewards: tuple[str, ...] = ()  # rewards (and rule checks) for eval_prompts; empty: the trained ones
    eval_every: int = 0  # steps between held-out scores; 0: before and after training only
    eval_before: bool = True
    log_every: int = 1
    save_every: int = 0  # steps; 0: only at the end (and on SIGTERM/SIGINT)
    keep_checkpoints: int = 2
    plot: bool = True

    def __post_init__(self) -> None:
        for name, value in ALGO_DEFAULTS[self.algo].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self._check_run(("max_steps", "time_budget_s"),
                        ("prompts_per_step", "group_size", "max_new_tokens", "epochs", "mini_batches", "micro_batch_size",
                         "log_every", "keep_checkpoints", "logprob_chunk", "rollout_batch_size", "train_items"))
        if self.algo != "ppo" and self.group_size < 2:
            raise ValueError(f"{self.algo} compares completions of the same prompt: group_size must be >= 2")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"{len(self.reward_weights)} reward_weights for {len(self.rewards)} rewards")
        if not self.rewards:
            raise ValueError("name at least one reward")
        if self.prompts_per_step * self.group_size < self.mini_batches:
            raise ValueError("mini_batches is larger than the number of completions per step")
        if self.clip_range < 0 or (self.clip_range_high is not None and self.clip_range_high < 0):
            raise ValueError("clip ranges must be >= 0")
        if self.beta < 0 or (self.kl_target is not None and self.kl_target <= 0):
            raise ValueError("beta must be >= 0 and kl_target > 0")
        if self.kl_stop is not None and (self.algo != "ppo" or self.kl_stop <= 0):
            raise ValueError(f"kl_stop must be > 0 and needs algo ppo (whose rollouts measure the KL to the reference), "
                             f"got kl_stop={self.kl_stop} with algo {self.algo}")
        if not 0 < self.temperature <= 10:
            raise ValueError(f"temperature must be in (0, 10] (sampling is what RL learns from), got {self.temperature}")

    @property
    def weights(self) -> tuple[float, ...]:
        return self.reward_weights or (1.0,) * len(self.rewards)

    @property
    def needs_old_logps(self) -> bool:
        """The policy changes before the batch is used up, so the sampling policy's log-probs are kept."""
        return self.algo == "ppo" or self.epochs > 1 or self.mini_batches > 1

    @property
    def needs_reference(self) -> bool:
        return self.algo == "ppo" or self.beta > 0 or self.track_kl


@dataclass
class RLResult:
    out_dir: Path
    checkpoint: Path | None
    adapter: Path | None
    steps: int
    train_seconds: float
    scores_before: dict[str, float] | None
    scores_after: dict[str, float] | None
    stopped_by: str | None
    history: list[dict[str, float]] = field(default_factory=list)  # the logged step records
    kl_stopped: float | None = None  # the rollout KL that passed kl_stop (its update undone), if one did


# --------------------------------------------------------------------------------------------
# What a run holds
# --------------------------------------------------------------------------------------------
@dataclass
class RLState(RunState):
    """Counters of an RL run (tokens: completion tokens trained on)."""

    episodes: int = 0  # completions generated
    kl_coef: float = 0.0  # beta now (adaptive with kl_target)
    kl_stopped: float | None = None  # the rollout KL that passed kl_stop and ended the run
    scores_before: dict[str, float] | None = None
    scores_after: dict[str, float] | None = None


@dataclass
class RLRun:
    config: RLConfig
    dist: DistInfo
    model: Transformer  # the policy (LoRA-wrapped or whole)
    tokenizer: Tokenizer
    value_head: nn.Linear | None  # PPO: a score head over the policy's hidden states
    reference: Transformer | None  # full fine-tuning with a KL: a frozen copy; LoRA: None (adapter switched off)
    records: list[PromptRecord]
    prompt_ids: list[list[int]]
    order: PromptOrder
    rewards: list[Reward]
    optimizer: Optimizers
    precision: autocast
    metrics: MetricsLog
    display: ProgressDisplay
    clock: TrainClock
    state: RLState
    score: TaskScorer | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    twin: Transformer | None = None  # the copy rollouts sample from (see `sampler`)
    before_update: dict[str, Any] | None = None  # with kl_stop: weights and optimizer before the last update

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)

    def sampler(self) -> Transformer:
        """The model rollouts sample from: the policy itself when it is plain float32, else its
        inference twin (adapters merged, in the rollout dtype), refreshed to the current weights."""
        config = self.config
        dtype = torch.bfloat16 if (config.rollout_dtype or config.dtype) == "bfloat16" else torch.float32
        if config.method == "full" and dtype == torch.float32:
            return self.model
        self.twin = inference_twin(self.model, dtype, self.twin)
        return self.twin

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_id if tok.pad_id is not None else (tok.eos_id if tok.eos_id is not None else 0)

    @property
    def progress(self) -> float:
        config, parts = self.config, []
        if config.max_steps is not None:
            parts.append(self.state.step / config.max_steps)
        if config.time_budget_s is not None:
            parts.append(self.clock.seconds / config.time_budget_s)
        return max(parts)

    @property
    def trainable(self) -> nn.Module:
        """The modules whose gradients are clipped together: the policy (and the value head)."""
        return nn.ModuleList([self.model] + ([self.value_head] if self.value_head is not None else []))


@dataclass
class Experience:
    """One step's rollouts, scored: what the update learns from."""

    rollout: Rollout
    batch: RolloutBatch
    scores: RewardScores
    rewards: torch.Tensor  # [N] the total reward (missing-EOS penalty included)
    advantages: torch.Tensor  # [N] (GRPO, REINFORCE) or [N, C] (PPO)
    old_logps: torch.Tensor | None  # [N, C] the sampling policy's
    ref_logps: torch.Tensor | None  # [N, C]
    values: torch.Tensor | None = None  # [N, C] PPO
    returns: torch.Tensor | None = None
    active: torch.Tensor | None = None  # rows the update runs on (None: all); the others' gradient is 0
    stats: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Forward passes over completions
# --------------------------------------------------------------------------------------------
def completion_forward(model: Transformer, batch: RolloutBatch, *, temperature: float, chunk: int,
                       value_head: nn.Linear | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(log-probabilities of the completion tokens, entropies, values or None), each [N, C].

    The backbone runs once; the output head only at the completion positions, in chunks."""
    hidden = model(batch.ids, head=False)  # [N, L, D]
    picked = hidden.gather(1, batch.positions[..., None].expand(-1, -1, hidden.shape[-1]))  # [N, C, D]
    logps, entropy = token_logprobs(picked, model.lm_head.weight, batch.targets, chunk_size=chunk,
                                    temperature=temperature, softcap=model.config.logit_softcap)
    values = value_head(picked).squeeze(-1).float() if value_head is not None else None
    return logps, entropy, values


@torch.no_grad()
def batch_forward(run: RLRun, batch: RolloutBatch, active: torch.Tensor, *, reference: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad log-probabilities [N, C] (and PPO values) of the `active` rows, in micro-batches (0
    elsewhere); `reference`: of the reference policy (LoRA: this model with its adapter switched off)."""
    config = run.config
    n, width = batch.targets.shape
    logps = torch.zeros(n, width)
    values = torch.zeros(n, width) if run.value_head is not None and not reference else None
    model = run.reference if reference and run.reference is not None else run.model
    switched_off = adapters_disabled(run.model) if reference and run.reference is None else nullcontext()
    with switched_off:
        for rows in active.split(config.micro_batch_size) if len(active) else ():
            micro = batch.select(rows).to(run.dist.device)
            with run.precision:
                lp, _, v = completion_forward(model, micro, temperature=config.temperature, chunk=config.logprob_chunk,
                                              value_head=None if reference else run.value_head)
            logps[rows, :lp.shape[1]] = lp.float().cpu()
            if values is not None and v is not None:
                values[rows, :v.shape[1]] = v.cpu()
    return logps, values


def reward_inputs(records: Sequence[PromptRecord], texts: Sequence[str]) -> tuple[list, list, dict[str, list]]:
    """(prompts, completions, columns) as reward functions receive them, TRL's way: chat prompts as
    message lists and their completions as one assistant message; each record's other fields as columns."""
    prompts = [r.prompt if isinstance(r.prompt, str) else [dict(m) for m in r.prompt] for r in records]
    completions = [[{"role": "assistant", "content": t}] if r.conversational else t for r, t in zip(records, texts)]
    columns = {key: [r.columns.get(key) for r in records] for key in sorted({k for r in records for k in r.columns})}
    return prompts, completions, columns


# --------------------------------------------------------------------------------------------
# Steps 1-5: prompts, rollouts, rewards, no-grad passes, advantages
# --------------------------------------------------------------------------------------------
def collect(run: RLRun) -> Experience:
    """Sample completions of the next prompts, score them and work out their advantages."""
    config, state = run.config, run.state
    chosen = run.order.take(config.prompts_per_step)
    started = time.perf_counter()
    engine = Engine(run.sampler(), run.tokenizer, max_batch_size=min(config.rollout_batch_size,
                                                                       config.prompts_per_step * config.group_size))
    rollout = sample(engine, [run.prompt_ids[i] for i in chosen], group_size=config.group_size,
                     max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                     top_k=config.top_k)
    run.model.train()  # an engine on the policy itself puts it in eval mode
    rollout_seconds = time.perf_counter() - started
    records = [run.records[i] for i in chosen for _ in range(config.group_size)]
    scores = score_completions(run.rewards, *reward_inputs(records, rollout.texts))
    rewards = scores.total.clone()
    stopped = torch.tensor(rollout.stopped)
    if config.missing_eos_penalty is not None:
        rewards[~stopped] -= config.missing_eos_penalty
    batch = rollout.batch(run.pad_id)
    stats = scores.metrics() | rollout.metrics()
    state.episodes += len(rollout)
    active = torch.arange(len(rollout))  # the completions the update learns from
    if config.algo != "ppo":
        advantages, std = group_advantages(rewards, config.group_size, config.scale_rewards)
        stats["frac_reward_zero_std"] = float(torch.isclose(std, torch.zeros_like(std)).float().mean())
        if config.skip_zero_advantage and config.beta == 0:  # their gradient is exactly 0
            active = active[advantages != 0]
    old_logps = values = ref_logps = None
    if config.needs_old_logps:
        old_logps, values = batch_forward(run, batch, active)
    if config.needs_reference:
        ref_logps, _ = batch_forward(run, batch, active, reference=True)
    stats |= {"time/rollout_s": rollout_seconds, "time/score_s": time.perf_counter() - started - rollout_seconds,
              "active_ratio": len(active) / len(rollout)}
    if config.algo != "ppo":
        return Experience(rollout, batch, scores, rewards, advantages, old_logps, ref_logps, active=active, stats=stats)
    assert old_logps is not None and ref_logps is not None and values is not None
    advantages, returns, ppo_stats = ppo_advantages(config, state, rewards, old_logps, ref_logps, values, batch.mask)
    stats |= ppo_stats | {"val/num_eos_tokens": float(stopped.sum())}
    return Experience(rollout, batch, scores, rewards, advantages, old_logps, ref_logps, values, returns, active, stats)


def ppo_advantages(config: RLConfig, state: RLState, rewards: torch.Tensor, old_logps: torch.Tensor,
                   ref_logps: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """PPO's (advantages, returns, objective/* statistics): every token's reward is -beta x its KL
    to the reference, the last token's adds the completion's reward; GAE; whitening. With a KL
    target, beta then moves towards the coefficient that keeps the KL there."""
    kl = (kl_k1 if config.kl_estimator == "k1" else kl_k3)(old_logps, ref_logps) * mask
    non_score = -state.kl_coef * kl
    token_rewards = non_score.clone()
    token_rewards[torch.arange(len(rewards)), mask.sum(1) - 1] += rewards
    if config.whiten_rewards:
        token_rewards = whiten(token_rewards, mask, shift_mean=False) * mask
    advantages, returns = gae(token_rewards, values, mask, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages = whiten(advantages, mask) * mask
    mean_kl = float(kl.sum(1).mean())
    stats = {"objective/kl": mean_kl, "objective/entropy": float((-old_logps * mask).sum(1).mean()),
             "objective/non_score_reward": float(non_score.sum(1).mean()),
             "objective/rlhf_reward": float(non_score.sum(1).mean() + rewards.mean()),
             "objective/scores": float(rewards.mean()), "objective/kl_coef": state.kl_coef}
    if config.kl_target is not None:  # proportional controller (Ziegler et al. 2019)
        error = max(-0.2, min(0.2, mean_kl / config.kl_target - 1))
        state.kl_coef *= 1 + error * len(rewards) / config.kl_horizon
    return advantages, returns, stats


# --------------------------------------------------------------------------------------------
# Step 6: the update
# --------------------------------------------------------------------------------------------
def update(run: RLRun, exp: Experience) -> dict[str, float]:
    """`epochs` passes over the experience, `mini_batches` optimizer steps each; returns the means
    of the statistics under TRL's names."""
    config, state, batch = run.config, run.state, exp.batch
    in_loss_kl = config.algo != "ppo" and config.beta > 0  # PPO's KL is in the reward instead
    logged: dict[str, list[float]] = {}

    def note(**values: Any) -> None:
        for key, value in values.items():
            logged.setdefault(key, []).append(float(value))

    learns = torch.zeros(len(exp.rollout), dtype=torch.bool)
    learns[exp.active if exp.active is not None else slice(None)] = True
    for _ in range(config.epochs):
        for rows in torch.randperm(len(exp.rollout)).tensor_split(config.mini_batches):
            run.optimizer.set_lr_multiplier(lr_multiplier(config.schedule, state.step, run.progress))
            tokens = float(batch.mask[rows].sum())  # the loss normalisers are the optimizer step's, all rows
            if config.loss_type == "dapo":  # TRL: the generation batch's tokens per optimizer step
                tokens = float(batch.mask.sum()) / config.mini_batches
            policy_total = value_total = 0.0
            learning_rows = rows[learns[rows]]
            for micro_rows in learning_rows.split(config.micro_batch_size) if len(learning_rows) else ():
                micro = batch.select(micro_rows).to(run.dist.device)
                width, mask = micro.mask.shape[1], micro.mask

                def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:  # this micro-batch's rows and width
                    if tensor is None:
                        return None
                    rows_of = tensor[micro_rows]
                    return (rows_of[:, :width] if rows_of.dim() == 2 else rows_of).to(run.dist.device)

                with run.precision:
                    logps, entropy, values = completion_forward(run.model, micro, temperature=config.temperature,
                                                                chunk=config.logprob_chunk, value_head=run.value_head)
                logps = logps.float()
                old = cut(exp.old_logps) if exp.old_logps is not None else logps.detach()
                out = policy_loss(logps, old, cut(exp.advantages), mask, clip_low=config.clip_range or None,
                                  clip_high=config.clip_range_high, loss_type=config.loss_type, ref_logps=cut(exp.ref_logps),
                                  beta=config.beta if in_loss_kl else 0.0, kl_ratio_correction=config.kl_ratio_correction,
                                  max_completion_length=config.max_new_tokens, num_sequences=len(rows), num_tokens=tokens)
                loss = out.loss
                policy_total += float(out.loss.detach())
                note(entropy=masked_mean(entropy, mask), **clip_metrics(out, mask),
                     **{"policy/approxkl_avg": 0.5 * masked_mean((logps.detach() - old) ** 2, mask),
                        "val/ratio": masked_mean(out.ratio.detach(), mask)})
                if out.kl is not None:  # logged as TRL does: ratio-weighted when the loss weights it
                    weight = out.ratio.detach() if in_loss_kl and config.kl_ratio_correction else 1.0
                    note(kl=masked_mean(out.kl.detach() * weight, mask))
                if values is not None:
                    v_loss, v_clipfrac = value_loss(values, cut(exp.values), cut(exp.returns), mask,
                                                    clip_range=config.value_clip, num_tokens=tokens)
                    loss = loss + config.vf_coef * v_loss
                    value_total += float(v_loss.detach())
                    note(**{"val/clipfrac_avg": v_clipfrac})
                loss.backward()
            for param in run.trainable.parameters():  # rows without a gradient still make a step, as if run
                if param.requires_grad and param.grad is None:
                    param.grad = torch.zeros_like(param)
            ensure_finite(policy_total + config.vf_coef * value_total, state.step + 1, run.dist)
            note(loss=policy_total + config.vf_coef * value_total, grad_norm=clip_gradients(run.trainable, config.grad_clip))
            if run.value_head is not None:
                note(**{"loss/policy_avg": policy_total, "loss/value_avg": value_total})
            run.optimizer.step()
            run.optimizer.zero_grad()
    stats = {key: sum(values) / len(values) for key, values in logged.items()}
    if config.algo == "ppo":
        stats |= {"policy/clipfrac_avg": stats["clip_ratio/region_mean"], "policy/entropy_avg": stats["entropy"],
                  "val/ratio_var": _variance(logged["val/ratio"])}
    return stats


def _variance(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)


class KLStop(Exception):
    """A rollout's KL to the reference passed `kl_stop`."""

    def __init__(self, kl: float) -> None:
        super().__init__(f"rollout KL {kl:.3f}")
        self.kl = kl


def snapshot(run: RLRun) -> dict[str, Any]:
    """The trainable weights and the optimizer's state, copied (LoRA: the adapters and value head only)."""
    weights = {name: p.detach().clone() for name, p in run.trainable.named_parameters() if p.requires_grad}
    return {"weights": weights, "optimizer": copy.deepcopy(run.optimizer.state_dict())}


def undo_last_update(run: RLRun) -> None:
    """Puts back the weights and optimizer state `snapshot` took before the last update."""
    saved = run.before_update
    assert saved is not None
    with torch.no_grad():
        for name, p in run.trainable.named_parameters():
            if name in saved["weights"]:
                p.copy_(saved["weights"][name])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.state.step -= 1


def rl_step(run: RLRun) -> dict[str, float]:
    """One step of the loop: collect experience (steps 1-5), learn from it (step 6), count it.
    With kl_stop, a rollout whose KL passes it raises KLStop before anything is learned from it."""
    started = time.perf_counter()
    exp = collect(run)
    collected = time.perf_counter()
    if run.config.kl_stop is not None:
        if exp.stats["objective/kl"] > run.config.kl_stop:
            raise KLStop(exp.stats["objective/kl"])
        run.before_update = snapshot(run)
    stats = exp.stats | update(run, exp) | {"time/update_s": time.perf_counter() - collected}
    run.state.step += 1
    run.state.tokens += int(exp.batch.mask.sum())
    return stats | {"episode": run.state.episodes, "learning_rate": run.optimizer.param_groups[0]["lr"],
                    "step_time": time.perf_counter() - started}


# --------------------------------------------------------------------------------------------
# Held-out scores, checkpoints, plot
# --------------------------------------------------------------------------------------------
def score_task(run: RLRun, label: str) -> dict[str, float]:
    """The held-out score from the run's `score` function, logged as eval/<metric>."""
    assert run.score is not None
    started = time.perf_counter()
    scores = dict(run.score(run.model, run.tokenizer, label))
    run.model.train()
    seconds = time.perf_counter() - started
    run.metrics.log(step=run.state.step, time_s=round(run.clock.seconds, 3), score_s=round(seconds, 1),
                    **{f"eval/{name}": value for name, value in scores.items()})
    run.state.last_eval_step = run.state.step
    shown = ", ".join(f"{name} {value:.1%}" if isinstance(value, float) else f"{name} {value}"
                      for name, value in scores.items())
    run.display.message(f"held-out ({label}, step {run.state.step}): {shown} ({seconds:.0f}s)")
    return scores


def save(run: RLRun) -> None:
    """An atomic checkpoint: the model (LoRA: merged, so it opens anywhere) and the resume state
    (prompt order, counters, adapter, value head, optimizer, RNG); then the plot."""
    config, state, model = run.config, run.state, run.model
    train_state = {"step": state.step, "tokens": state.tokens, "train_seconds": run.clock.seconds,
                   "episodes": state.episodes, "kl_coef": state.kl_coef, "prompt_order": run.order.state_dict(),
                   "method": config.method, "algo": config.algo, "scores_before": state.scores_before}
    export, extra = checkpoint_model(model)
    train_state |= extra
    if run.value_head is not None:
        train_state["value_head"] = run.value_head.weight.detach().cpu().clone()
    meta = {"step": state.step, "train_seconds": round(run.clock.seconds, 3), "lmforge_version": lmforge.__version__,
            "rl_config": config.to_dict(), "merged_lora": config.method == "lora"}
    state.checkpoint = save_training_checkpoint(run.out, step=state.step, model=export, wrapped=export,
                                                optimizer=run.optimizer, tokenizer=run.tokenizer, dist=run.dist, fsdp=False,
                                                train_state=train_state, meta=meta, keep=config.keep_checkpoints)
    state.last_save_step = state.step
    if config.plot:
        plot_rl(run.metrics.records(), run.out / "rl.png", title=f"{config.algo} {run.out.name}")


def resume_run(config: RLConfig, model: Transformer, value_head: nn.Linear | None, order: PromptOrder,
               dist: DistInfo) -> tuple[RLState, dict[str, Any]]:
    """The adapter (LoRA; base weights come from --model) or the weights (full), the value head,
    the prompt order and counters from the last checkpoint; returns the run state and the saved
    state (its optimizer state is restored once the optimizer exists)."""
    checkpoint = find_resume_checkpoint(config.out_dir)
    saved = load_meta(checkpoint).get("rl_config") or {}
    if saved.get("method") != config.method or saved.get("algo") != config.algo:
        raise ValueError(f"{checkpoint} is from a {saved.get('algo', 'non-RL')} ({saved.get('method')}) run; "
                         f"this run is {config.algo} ({config.method})")
    resumed = restore_model(checkpoint, model, dist)
    if value_head is not None:
        with torch.no_grad():
            value_head.weight.copy_(resumed["value_head"])
    order.load_state_dict(resumed["prompt_order"])
    state = RLState.resumed(checkpoint, resumed, episodes=int(resumed["episodes"]), kl_coef=float(resumed["kl_coef"]),
                            scores_before=resumed.get("scores_before"))
    return state, resumed


def plot_rl(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """reward, KL to the reference and the held-out score against steps, one panel each."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 7), dpi=110)
    axes = figure.subplots(3, 1, sharex=True)
    curves = [("reward", ["reward"]), ("KL to reference", ["kl", "objective/kl"]),
              ("held-out", sorted({k for r in records for k in r if k.startswith("eval/") and k != "eval/n"}))]
    for axis, (label, keys) in zip(axes, curves):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                axis.plot(*zip(*points), "o-" if label == "held-out" else "-", markersize=3, label=key)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    axes[0].set_title(title)
    axes[-1].set_xlabel("step")
    return save_figure(figure, path)


# --------------------------------------------------------------------------------------------
# The loop and the run, top to bottom
# --------------------------------------------------------------------------------------------
def train(run: RLRun, signals: StopSignals) -> None:
    """Steps until the run's length is reached or a signal asks to stop; held-out scores and
    checkpoints on their schedules, with the training clock paused."""
    config, state = run.config, run.state
    while run.progress < 1.0:
        try:
            stats = rl_step(run)
        except KLStop as stop:
            kl_stop_reached(run, stop.kl)
            return
        record = {"step": state.step, "tokens": state.tokens, "time_s": round(run.clock.seconds, 3)} | {
            k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()}
        run.history.append(record)
        if state.step % config.log_every == 0 or state.step == 1:
            run.metrics.log(**record)
            kl = record.get("kl", record.get("objective/kl"))
            run.display.update(run.progress, f"step {state.step} | reward {record['reward']:.3f}"
                               + (f" | kl {kl:.4f}" if kl is not None else "")
                               + f" | len {record['completions/mean_length']:.1f} | {record['step_time']:.1f}s/step",
                               log_line=True)
        with run.clock.paused():
            if run.score is not None and config.eval_every and state.step % config.eval_every == 0:
                score_task(run, f"step{state.step}")
            if checkpoint_if_due(state, signals, run.dist, config.save_every, lambda: save(run), run.display.message):
                return


def kl_stop_reached(run: RLRun, kl: float) -> None:
    """The policy of the last update left the KL bound: undo that update (the policy before it was
    measured inside) and end the run; logged, and said on the display."""
    state = run.state
    undone = state.step
    if run.before_update is not None:
        undo_last_update(run)
    state.kl_stopped = kl
    run.metrics.log(step=state.step, time_s=round(run.clock.seconds, 3), **{"kl_stop/rollout_kl": round(kl, 6),
                    "kl_stop/bound": run.config.kl_stop, "kl_stop/undone_step": undone})
    run.display.message(f"rollout KL {kl:.3f} > kl_stop {run.config.kl_stop}: step {undone}'s update undone, "
                        f"the run ends at step {state.step}")


def finish(run: RLRun) -> RLResult:
    """The last held-out score, the final checkpoint, the PEFT adapter and summary.json (all but
    the result skipped when a signal stopped the run)."""
    config, state = run.config, run.state
    state.train_seconds = run.clock.seconds
    adapter = None
    if not state.stopped_by:
        if run.score is not None:
            state.scores_after = (score_task(run, "after") if state.last_eval_step != state.step or not run.metrics.records()
                                  else _last_scores(run))
        if state.last_save_step != state.step:
            save(run)
        if config.method == "lora":
            adapter, _ = save_lora_outputs(run.model, run.tokenizer, run.out, config.model, False, run.display)
    result = RLResult(run.out, state.checkpoint, adapter, state.step, state.train_seconds, state.scores_before,
                      state.scores_after, state.stopped_by, run.history, state.kl_stopped)
    if not state.stopped_by:
        last = run.history[-1] if run.history else {}
        summary = {"model": config.model, "algo": config.algo, "method": config.method, "steps": state.step,
                   "episodes": state.episodes, "train_seconds": round(state.train_seconds, 1),
                   "scores_before": state.scores_before, "scores_after": state.scores_after,
                   "final_reward": last.get("reward"), "final_kl": last.get("kl", last.get("objective/kl")),
                   "checkpoint": str(state.checkpoint) if state.checkpoint else None,
                   "adapter": str(adapter) if adapter else None}
        if state.kl_stopped is not None:
            summary["kl_stop"] = {"bound": config.kl_stop, "rollout_kl": round(state.kl_stopped, 6),
                                  "undone_step": state.step + 1}
        write_text_atomically(run.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def _last_scores(run: RLRun) -> dict[str, float]:
    last = [r for r in run.metrics.records() if any(k.startswith("eval/") for k in r)][-1]
    return {k.removeprefix("eval/"): v for k, v in last.items() if k.startswith("eval/")}


def reward_scorer(records: Sequence[PromptRecord], rewards: Sequence[Reward], *, max_new_tokens: int,
                  batch_size: int = 32) -> TaskScorer:
    """A held-out score for prompts without a task benchmark: every reward's mean over greedy
    completions of `records` (and "reward", their weighted total; "clipped_ratio", the share cut at
    max_new_tokens). Give it functions that only check (a rule) as well as the trained ones."""

    def score(model: Transformer, tokenizer: Tokenizer, label: str) -> dict[str, float]:
        ids = [encode_prompt(tokenizer, r.prompt if isinstance(r.prompt, str) else list(r.prompt)) for r in records]
        engine = Engine(model, tokenizer, max_batch_size=max(1, min(batch_size, len(ids))))
        rollout = sample(engine, ids, group_size=1, max_new_tokens=max_new_tokens, temperature=0.0,
                         generator=torch.Generator().manual_seed(0))  # greedy; the training RNG is left alone
        scores = score_completions(rewards, *reward_inputs(records, rollout.texts))
        return ({"reward": float(scores.total.mean())} | {name: float(v.mean()) for name, v in scores.by_name.items()}
                | {"clipped_ratio": rollout.metrics()["completions/clipped_ratio"], "n": len(records)})

    return score


def load_prompts(config: RLConfig) -> list[PromptRecord]:
    if config.prompts is not None:
        return read_prompt_jsonl(config.prompts)
    return task_prompts(config.task, config.train_items, "train", config.seed)


def train_rl(config: RLConfig, rewards: Sequence[Reward], *, resume: bool = False, show_progress: bool = True,
             score: TaskScorer | None = None) -> RLResult:
    """Train as `config` says against `rewards` (built by the caller from `config.rewards`); with
    `score`, measure the model on held-out data before, every eval_every steps and after."""
    if [r.name for r in rewards] != list(config.rewards):
        raise ValueError(f"the reward functions {[r.name for r in rewards]} do not match config.rewards {list(config.rewards)}")
    with single_process(config.device, "RL") as dist:
        return _train_rl(config, list(rewards), dist, resume, show_progress, score)


def _train_rl(config: RLConfig, rewards: list[Reward], dist: DistInfo, resume: bool, show_progress: bool,
              score: TaskScorer | None) -> RLResult:
    prepare_process(config.threads, config.deterministic, config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ProgressDisplay(enabled=show_progress) as display:
        display.start(f"{config.algo} ({config.method})")
        model, tokenizer = load_model(config.model, dtype=torch.float32, device=dist.device)
        records = load_prompts(config)
        limit = model.config.max_seq_len - config.max_new_tokens
        prompt_ids = []
        for record in records:
            ids = encode_prompt(tokenizer, record.prompt if isinstance(record.prompt, str) else list(record.prompt))
            if len(ids) > limit:
                raise ValueError(f"{record.where}: the prompt has {len(ids)} tokens; with max_new_tokens="
                                 f"{config.max_new_tokens} at most {limit} fit the model's context")
            prompt_ids.append(ids)
        reference = None
        if config.method == "lora":
            apply_lora(model, config.lora.target_spec, rank=config.lora.rank, alpha=config.lora.alpha,
                       dropout=config.lora.dropout)
        elif config.needs_reference:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        value_head = ScalarHeadModel(model).score if config.algo == "ppo" else None
        optimizer = build_optimizer(model, config.optim)
        if value_head is not None:  # the value head learns from zero: its own (larger) learning rate
            value_lr = config.value_lr or 10 * config.optim.lr
            optimizer = Optimizers(optimizer.optimizers + [torch.optim.AdamW(value_head.parameters(), lr=value_lr,
                                                                             betas=config.optim.betas)])
        trainable, total = count_parameters(model)
        display.message(f"{config.algo}: {len(records)} prompts, {config.prompts_per_step} x {config.group_size} "
                        f"completions per step, rewards {', '.join(f'{r.name} x{r.weight:g}' for r in rewards)}; "
                        f"model {config.model} ({total / 1e6:.1f}M parameters, {trainable:,} trainable, {config.method})")
        order = PromptOrder(len(records), config.seed)
        state, resumed = resume_run(config, model, value_head, order, dist) if resume else (RLState(kl_coef=config.beta), None)
        if resumed is not None:
            restore_optimizer(optimizer, model, resumed["optimizer"])
        metrics = MetricsLog(out / "metrics.jsonl", resume_step=state.step if resumed else None)
        run = RLRun(config, dist, model, tokenizer, value_head, reference, records, prompt_ids, order, rewards, optimizer,
                    autocast(dist.device, config.dtype), metrics, display, TrainClock(already=state.train_seconds), state,
                    score)
        model.train()
        write_text_atomically(out / "run_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        if score is not None and config.eval_before and run.state.scores_before is None:
            with run.clock.paused():
                run.state.scores_before = score_task(run, "before")
        with StopSignals() as signals:
            train(run, signals)
            return finish(run)
