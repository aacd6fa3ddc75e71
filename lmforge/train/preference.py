"""Direct preference optimization and its family (DPO, IPO, SimPO, ORPO, KTO): one loop, the loss a setting.

    pretrained model + preference JSONL (TRL layouts)  ->  checkpoints, adapter/, merged/, metrics.jsonl,
                                                          loss.png, rewards.png, summary.json

The phases, top to bottom:
1. data: read and check the pairs (`lmforge.data.preference`), hold some out, tokenize them as TRL does
   (`lmforge.train.pairs`); KTO takes unpaired examples (pairs are unpaired: chosen good, rejected bad).
2. reference: DPO, IPO and KTO compare the policy with the starting model. Its log-probabilities of
   every completion are computed once, before any training, and cached on disk
   (`reference_logps.pt`, keyed by the model's weights and the tokens), so no second model is ever
   held in memory and a resumed full fine-tune still compares with the model it started from.
   SimPO and ORPO need no reference.
3. method: LoRA wraps the chosen linear layers, or every weight trains (full).
4. resume: the adapter (or the weights), the data position and the optimizer from the last checkpoint.
5. the loop: micro-batches of pairs (chosen and rejected sequences in one forward), the loss from
   `lmforge.train.losses.preference`, the shared step helpers (clipping, finite-loss check),
   TRL's metric names in metrics.jsonl (`rewards/chosen`, `rewards/rejected`, `rewards/margins`,
   `rewards/accuracies`, `logps/chosen`, `logps/rejected`; `eval_...` on held-out pairs), progress,
   checkpoints on SIGTERM/SIGINT and on schedule.
6. the end: the optional task score after training (a `score` function handed in, as for
   fine-tuning), the final checkpoint, the PEFT adapter, summary.json.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

import lmforge
from lmforge.core.files import replace_atomically, write_text_atomically
from lmforge.core.plotting import new_figure, save_figure
from lmforge.core.progress import ProgressDisplay
from lmforge.data.chat import ChatBatches
from lmforge.data.preference import PreferenceData, read_preference_jsonl, unpair
from lmforge.io.checkpoint import load_meta
from lmforge.io.registry import load_model
from lmforge.model.lora import apply_lora, count_parameters
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.checkpointing import (RunState, checkpoint_if_due, checkpoint_model, find_resume_checkpoint,
                                         restore_model, restore_optimizer, save_lora_outputs, save_training_checkpoint)
from lmforge.train.config import OptimConfig, RecipeConfig, ScheduleConfig
from lmforge.train.distributed import DistInfo, single_process
from lmforge.train.finetune import LoRASettings
from lmforge.train.losses.preference import PreferenceLoss, dpo_loss, ipo_loss, kto_loss, orpo_loss, simpo_loss
from lmforge.train.metrics import MetricsLog, Throughput, log_training_step, plot_metrics
from lmforge.train.validation import score_task
from lmforge.train.optim import build_optimizer
from lmforge.train.pairs import (EncodedExample, EncodedPair, collate_examples, collate_pairs, completion_logps,
                                 encode_examples, encode_pairs)
from lmforge.train.precision import autocast
from lmforge.train.reproducibility import prepare_process
from lmforge.train.schedule import fraction_done, lr_multiplier
from lmforge.train.signals import StopSignals, TrainClock
from lmforge.train.step import clip_gradients, ensure_finite

LossName = Literal["dpo", "ipo", "simpo", "orpo", "kto"]
NEEDS_REFERENCE = ("dpo", "ipo", "kto")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1}
DEFAULT_LR = {"lora": 5e-5, "full": 1e-6}
REFERENCE_FILE = "reference_logps.pt"
TaskScorer = Callable[[Transformer, Tokenizer, str], dict[str, float]]


@dataclass(frozen=True)
class VerifiableSettings:
    """The default data: on-policy pairs sampled from the model on a generated task (the CLI makes
    them when `data` is not given; see `lmforge.train.feedback.verifiable_pairs`)."""

    task: str = "count"
    prompts: int = 400  # training questions (the task's train split)
    samples: int = 4  # sampled answers per question
    temperature: float = 1.0
    top_p: float | None = None
    max_new_tokens: int = 48
    pairs_per_prompt: int = 1
    eval_items: int = 200  # held-out questions scored before and after training (0: no score)

    def __post_init__(self) -> None:
        for name in ("prompts", "samples", "max_new_tokens", "pairs_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"generate.{name} must be positive, got {getattr(self, name)}")
        if self.samples < 2:
            raise ValueError("generate.samples must be at least 2 (pairs need a correct and an incorrect answer)")
        if self.temperature <= 0:
            raise ValueError("generate.temperature must be above 0: several answers per question need sampling")


@dataclass(frozen=True)
class PairRunConfig(RecipeConfig):
    """What every run on preference pairs sets (the DPO family here, reward models in `.reward`)."""

    model: str = "smollm2-135m-instruct"  # known name, GGUF file, HF folder or lmforge checkpoint
    data: str | None = None  # preference JSONL (TRL layouts); None -> pairs generated as `generate` says (CLI)
    val_data: str | None = None  # held-out pairs; None -> split off `data`
    val_fraction: float = 0.05
    val_max: int = 100
    generate: VerifiableSettings = field(default_factory=VerifiableSettings)
    out_dir: str = "runs/dpo"
    method: Literal["full", "lora"] = "lora"
    lora: LoRASettings = field(default_factory=LoRASettings)
    max_length: int = 512  # tokens of prompt + completion
    batch_size: int = 8  # pairs (kto: examples) per micro-batch
    grad_accum: int = 1
    epochs: float | None = 1.0
    max_steps: int | None = None
    time_budget_s: float | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=DEFAULT_LR["lora"], weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=5, min_lr_frac=0.1))
    grad_clip: float = 1.0
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None
    log_every: int = 5
    eval_every: int = 50  # steps between held-out pair evaluations; 0 = only at the end
    eval_batch_size: int = 16
    save_every: int = 0  # steps; 0 = only at the end (and on SIGTERM/SIGINT)
    keep_checkpoints: int = 2
    plot: bool = True

    def __post_init__(self) -> None:
        self._check_run(("epochs", "max_steps", "time_budget_s"),
                        ("max_length", "batch_size", "grad_accum", "log_every", "eval_batch_size", "keep_checkpoints"))
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class PreferenceConfig(PairRunConfig):
    loss: LossName = "dpo"
    beta: float | None = None  # None -> the loss's usual value (dpo/ipo/orpo/kto 0.1, simpo 2.0)
    label_smoothing: float = 0.0  # dpo (conservative DPO) and simpo
    simpo_gamma: float = 0.5  # simpo: target reward margin
    desirable_weight: float = 1.0  # kto
    undesirable_weight: float = 1.0  # kto
    reference_cache: str | None = None  # None -> out_dir/reference_logps.pt
    score_task: str | None = None  # a generated task scored before/after (default: generate.task when pairs are generated)
    eval_before: bool = True  # score the task before training too (with a score function)
    merge: bool = False  # also write the merged model to out_dir/merged (LoRA)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta is not None and self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.merge and self.method != "lora":
            raise ValueError("merge applies to LoRA runs (a full fine-tune already is a complete model)")

    @property
    def effective_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[self.loss]

    @property
    def reference_path(self) -> Path:
        return Path(self.reference_cache) if self.reference_cache else Path(self.out_dir) / REFERENCE_FILE


@dataclass
class PreferenceResult:
    out_dir: Path
    checkpoint: Path | None
    adapter: Path | None
    merged: Path | None
    steps: int
    train_seconds: float
    scores_before: dict[str, float] | None
    scores_after: dict[str, float] | None
    stopped_by: str | None
    evals: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Phase 1, data
# --------------------------------------------------------------------------------------------
@dataclass
class PreferenceSet:
    """Tokenized training and held-out examples: pairs, or (KTO) unpaired examples with the
    mismatched completion each one is paired with for the KL estimate."""

    train: list[EncodedPair] | list[EncodedExample]
    val: list[EncodedPair] | list[EncodedExample]
    kl_train: list[EncodedExample] = field(default_factory=list)  # KTO: example i's prompt, another completion
    kl_val: list[EncodedExample] = field(default_factory=list)
    summary: str = ""


def _kl_partners(examples: list[EncodedExample], max_length: int, seed: int) -> list[EncodedExample]:
    """For KTO's KL estimate: example i's prompt with the completion of another example (a fixed,
    seeded derangement, so the reference log-probabilities can be cached like the others)."""
    if len(examples) < 2:
        return []
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + 7)).tolist()
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    out = []
    for i, example in enumerate(examples):
        completion = examples[partner[i]].completion[:max(1, max_length - len(example.prompt))]
        out.append(EncodedExample(example.prompt, completion, example.label, example.index))
    return out


def build_data(config: PreferenceConfig, tokenizer: Tokenizer, max_seq_len: int) -> PreferenceSet:
    """Phase 1: read, check, split and tokenize (sequences cut to `max_length` and the model context)."""
    if config.data is None:
        raise ValueError("no preference data: give a JSONL file (or let the CLI generate verifiable pairs)")
    data = read_preference_jsonl(config.data)
    max_length = min(config.max_length, max_seq_len)
    if config.loss == "kto":
        if data.pairs:
            data = PreferenceData(unpaired=unpair(data.pairs), skipped=data.skipped)
    elif not data.pairs:
        raise ValueError(f"{config.data}: holds unpaired (prompt, completion, label) records; --loss {config.loss} "
                         "needs pairs (chosen and rejected); use --loss kto")
    train, val = (data, read_preference_jsonl(config.val_data)) if config.val_data else \
        data.hold_out(config.val_fraction, config.val_max, config.seed)
    if config.loss == "kto":
        train_set, skipped = encode_examples(tokenizer, train.unpaired, max_length)
        val_set, _ = encode_examples(tokenizer, val.unpaired if val.unpaired else unpair(val.pairs), max_length)
        kl_train, kl_val = _kl_partners(train_set, max_length, config.seed), _kl_partners(val_set, max_length, config.seed)
        kind = "examples"
    else:
        train_set, skipped = encode_pairs(tokenizer, train.pairs, max_length)
        val_set, _ = encode_pairs(tokenizer, val.pairs, max_length)
        kl_train, kl_val, kind = [], [], "pairs"
    if not train_set:
        raise ValueError(f"{config.data}: no usable training {kind} (skipped: {dict(skipped) or data.describe_skipped()})")
    if config.loss == "kto" and len(train_set) < 2:
        raise ValueError("KTO needs at least 2 training examples (its KL estimate pairs prompts with other completions)")
    dropped = dict(data.skipped) | dict(skipped)
    summary = (f"data: {len(train_set)} training {kind}, {len(val_set)} held out, from {config.data}"
               + (f"; skipped or cut: {', '.join(f'{n} {why}' for why, n in sorted(dropped.items()))}" if dropped else ""))
    return PreferenceSet(train_set, val_set, kl_train, kl_val, summary)


# --------------------------------------------------------------------------------------------
# Phase 2, reference log-probabilities: computed once before training, cached on disk
# --------------------------------------------------------------------------------------------
def _pad_id(tokenizer: Tokenizer) -> int:
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad batches with")
    return pad


def _fingerprint(model: Transformer, data: PreferenceSet) -> str:
    """Changes with the weights and with every token of every sequence (not with their order)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in sorted(model.state_dict().items()):
            digest.update(f"{name}:{tuple(param.shape)}:{float(param.double().sum()):.10e}".encode())
    for collection in (data.train, data.val, data.kl_train, data.kl_val):
        digest.update(json.dumps([list(map(list, (e.prompt, *(
            (e.chosen, e.rejected) if isinstance(e, EncodedPair) else (e.completion,))))) for e in collection]).encode())
    return digest.hexdigest()


@torch.no_grad()
def _logps_of(model: Transformer, examples: Sequence[EncodedPair] | Sequence[EncodedExample], pad_id: int,
              batch_size: int, device: torch.device, precision: autocast) -> torch.Tensor:
    """Summed completion log-probabilities: [N, 2] (chosen, rejected) for pairs, [N] for examples."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        pairs = isinstance(chunk[0], EncodedPair)
        batch = (collate_pairs(chunk, pad_id) if pairs else collate_examples(chunk, pad_id)).to(device)  # type: ignore[arg-type]
        with precision:
            logps, _, _ = completion_logps(model, batch)
        out.append(torch.stack(logps.float().cpu().chunk(2), dim=1) if pairs else logps.float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 2) if examples and isinstance(examples[0], EncodedPair) else 0)


def reference_logps(model: Transformer, data: PreferenceSet, config: PreferenceConfig, pad_id: int, device: torch.device,
                    display: ProgressDisplay) -> dict[str, torch.Tensor]:
    """Phase 2: the starting model's log-probabilities of every training and held-out completion
    (and KTO's mismatched ones), from the cache when it matches the weights and tokens, else
    computed now (the model in eval mode) and cached atomically."""
    key = _fingerprint(model, data)
    path = config.reference_path
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("key") == key:
            display.message(f"reference log-probabilities: cached in {path}")
            return cached
        display.message(f"reference log-probabilities: {path} is for other weights or data; recomputing")
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    precision = autocast(device, config.dtype)
    result = {"key": key}
    for name in ("train", "val", "kl_train", "kl_val"):
        result[name] = _logps_of(model, getattr(data, name), pad_id, config.eval_batch_size, device, precision)
    model.train(was_training)
    replace_atomically(path, lambda tmp: torch.save(result, tmp))
    display.message(f"reference log-probabilities: computed in {time.perf_counter() - started:.0f}s, cached in {path}")
    return result


# --------------------------------------------------------------------------------------------
# The loss of one micro-batch
# --------------------------------------------------------------------------------------------
@dataclass
class BatchOutcome:
    loss_sum: torch.Tensor  # summed per-pair (per-example) losses, with gradient
    count: int  # pairs (examples) in the batch
    stats: dict[str, list[float]]  # per pair (example) values for TRL's metrics


def _position(indices: torch.Tensor, lookup: dict[int, int]) -> torch.Tensor:
    return torch.tensor([lookup[int(i)] for i in indices], dtype=torch.long)


def batch_loss(model: Transformer, config: PreferenceConfig, examples: Sequence[EncodedPair] | Sequence[EncodedExample],
               reference: dict[str, torch.Tensor] | None, split: str, pad_id: int, device: torch.device,
               precision: autocast, kl_partners: dict[int, EncodedExample] | None = None,
               rows: dict[int, int] | None = None) -> BatchOutcome:
    """Forward the batch, compute the configured loss and the metrics TRL logs. `rows` maps an
    example's `index` to its row of the cached reference tensors of `split`."""
    beta = config.effective_beta
    if config.loss == "kto":
        return _kto_batch(model, config, examples, reference, split, pad_id, device, precision, kl_partners, rows)  # type: ignore[arg-type]
    batch = collate_pairs(examples, pad_id).to(device)  # type: ignore[arg-type]
    n = len(examples)
    with precision:
        logps, counts, prompt_logps = completion_logps(model, batch, prompt_too=config.loss == "orpo")
    chosen, rejected = logps[:n], logps[n:]
    n_chosen, n_rejected = counts[:n], counts[n:]
    if config.loss in ("dpo", "ipo"):
        ref = reference[split][_position(batch.indices[:n].cpu(), rows)].to(device)  # type: ignore[index]
        if config.loss == "dpo":
            result = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta, config.label_smoothing)
        else:
            result = ipo_loss(chosen, rejected, ref[:, 0], ref[:, 1], n_chosen, n_rejected, beta)
    elif config.loss == "simpo":
        result = simpo_loss(chosen / n_chosen, rejected / n_rejected, beta, config.simpo_gamma, config.label_smoothing)
    else:  # orpo: the NLL of the chosen sequences, prompt included (TRL's choice)
        nll = -(chosen + prompt_logps[:n]).sum() / (n_chosen + batch.prompt_lengths[:n] - 1).sum()
        result = orpo_loss(chosen / n_chosen, rejected / n_rejected, nll, beta)
    return BatchOutcome(result.losses.sum(), n, _pair_stats(result, chosen, rejected))


def _pair_stats(result: PreferenceLoss, chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, list[float]]:
    margins = result.chosen_rewards - result.rejected_rewards
    return {"rewards/chosen": result.chosen_rewards.tolist(), "rewards/rejected": result.rejected_rewards.tolist(),
            "rewards/margins": margins.tolist(), "rewards/accuracies": (margins > 0).float().tolist(),
            "logps/chosen": chosen.detach().tolist(), "logps/rejected": rejected.detach().tolist()}


def _kto_batch(model: Transformer, config: PreferenceConfig, examples: Sequence[EncodedExample],
               reference: dict[str, torch.Tensor], split: str, pad_id: int, device: torch.device, precision: autocast,
               kl_partners: dict[int, EncodedExample], rows: dict[int, int]) -> BatchOutcome:
    batch = collate_examples(examples, pad_id).to(device)
    position = _position(batch.indices.cpu(), rows)
    with precision:
        logps, _, _ = completion_logps(model, batch)
        with torch.no_grad():  # KTO's KL term is a detached batch estimate (TRL)
            partners = collate_examples([kl_partners[e.index] for e in examples], pad_id).to(device)
            kl_logps, _, _ = completion_logps(model, partners)
    ref, ref_kl = reference[split][position].to(device), reference[f"kl_{split}"][position].to(device)
    kl = (kl_logps - ref_kl).mean()
    good = torch.tensor([e.label for e in examples], dtype=torch.bool, device=device)
    result = kto_loss(logps[good], logps[~good], ref[good], ref[~good], kl, config.effective_beta,
                      config.desirable_weight, config.undesirable_weight)
    stats = {"rewards/chosen": result.chosen_rewards.tolist(), "rewards/rejected": result.rejected_rewards.tolist(),
             "logps/chosen": logps[good].detach().tolist(), "logps/rejected": logps[~good].detach().tolist(),
             "kl": [float(kl.clamp(min=0))]}
    return BatchOutcome(result.losses.sum(), len(examples), stats)


def summarise(stats: Sequence[dict[str, list[float]]], prefix: str = "") -> dict[str, float]:
    """Means of the per-pair values of several micro-batches, under TRL's names (with a prefix
    such as "eval_"); KTO's margin is the difference of the means, as TRL logs it."""
    merged: dict[str, list[float]] = {}
    for item in stats:
        for key, values in item.items():
            merged.setdefault(key, []).extend(values)
    out = {f"{prefix}{key}": sum(values) / len(values) for key, values in merged.items() if values}
    if f"{prefix}rewards/margins" not in out and f"{prefix}rewards/chosen" in out and f"{prefix}rewards/rejected" in out:
        out[f"{prefix}rewards/margins"] = out[f"{prefix}rewards/chosen"] - out[f"{prefix}rewards/rejected"]
    return out


# --------------------------------------------------------------------------------------------
# The run's state, and the steps it takes
# --------------------------------------------------------------------------------------------
@dataclass
class PreferenceState(RunState):
    scores_before: dict[str, float] | None = None
    scores_after: dict[str, float] | None = None


@dataclass
class PreferenceRun:
    config: PreferenceConfig
    dist: DistInfo
    model: Transformer
    tokenizer: Tokenizer
    data: PreferenceSet
    batches: ChatBatches  # serves lists of training examples, reshuffled per epoch, resumable
    reference: dict[str, torch.Tensor] | None
    optimizer: Any
    precision: autocast
    metrics: MetricsLog
    display: ProgressDisplay
    clock: TrainClock
    state: PreferenceState
    score: TaskScorer | None
    pad_id: int
    rows: dict[str, dict[int, int]] = field(default_factory=dict)  # split -> example index -> reference row
    partners: dict[str, dict[int, EncodedExample]] = field(default_factory=dict)  # KTO: split -> index -> KL partner

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def progress(self) -> float:
        config = self.config
        return fraction_done((self.state.step, config.max_steps), (self.batches.epoch_progress, config.epochs),
                             (self.clock.seconds, config.time_budget_s))

    def loss(self, examples: Sequence[Any], split: str) -> BatchOutcome:
        return batch_loss(self.model, self.config, examples, self.reference, split, self.pad_id, self.dist.device,
                          self.precision, self.partners.get(split), self.rows.get(split))


def train_step(run: PreferenceRun) -> tuple[float, float, dict[str, float], int]:
    """One optimizer step over `grad_accum` micro-batches, every pair weighted equally:
    (mean loss, gradient norm, TRL metrics, tokens)."""
    config, state = run.config, run.state
    run.optimizer.set_lr_multiplier(lr_multiplier(config.schedule, state.step, run.progress))
    micro = [run.batches.next_rows() for _ in range(config.grad_accum)]
    total = sum(len(m) for m in micro)
    loss_sum, stats, tokens = 0.0, [], 0
    for examples in micro:
        outcome = run.loss(examples, "train")
        (outcome.loss_sum / total).backward()
        loss_sum += float(outcome.loss_sum.detach())
        stats.append(outcome.stats)
        tokens += sum(len(e.prompt) + (len(e.chosen) + len(e.rejected) if isinstance(e, EncodedPair) else len(e.completion))
                      for e in examples)
    loss = loss_sum / total
    ensure_finite(loss, state.step + 1, run.dist)
    grad_norm = clip_gradients(run.model, config.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad()
    state.step += 1
    state.tokens += tokens
    return loss, grad_norm, summarise(stats), tokens


@torch.no_grad()
def validate(run: PreferenceRun) -> None:
    """The loss and TRL's metrics on the held-out pairs (`eval_` names), logged and kept."""
    config, state = run.config, run.state
    if not run.data.val:
        return
    started = time.perf_counter()
    was_training = run.model.training
    run.model.eval()
    loss_sum, stats = 0.0, []
    for start in range(0, len(run.data.val), config.eval_batch_size):
        outcome = run.loss(run.data.val[start:start + config.eval_batch_size], "val")
        loss_sum += float(outcome.loss_sum)
        stats.append(outcome.stats)
    run.model.train(was_training)
    record = {"step": state.step, "tokens": state.tokens, "time_s": round(run.clock.seconds, 3),
              "val_loss": loss_sum / len(run.data.val), **summarise(stats, "eval_"),
              "eval_s": round(time.perf_counter() - started, 3)}
    run.metrics.log(**record)
    state.evals.append(record)
    state.last_eval_step = state.step
    accuracy = record.get("eval_rewards/accuracies")
    run.display.message(f"step {state.step}: held-out loss {record['val_loss']:.4f}"
                        + (f", reward accuracy {accuracy:.1%}" if accuracy is not None else "")
                        + f", margin {record.get('eval_rewards/margins', float('nan')):.3f}")


def score_run(run: PreferenceRun, label: str) -> dict[str, float]:
    """The task score ("before" or "after" training) from the run's `score` function, logged."""
    return score_task(run.score, run.model, run.tokenizer, label, run.metrics, run.display, run.state.step,
                      run.state.tokens)


def plot_rewards(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Reward margins (left axis) and reward accuracy (right axis), train and held-out, against steps."""
    figure, margins = new_figure(7, 4.2)
    accuracy = margins.twinx()
    for axis, metric, colour in ((margins, "rewards/margins", "tab:blue"), (accuracy, "rewards/accuracies", "tab:orange")):
        for prefix, style in (("", "-"), ("eval_", "o--")):
            points = [(r["step"], r[prefix + metric]) for r in records if prefix + metric in r]
            if points:
                axis.plot(*zip(*points), style, color=colour, markersize=3, linewidth=1,
                          label=f"{prefix.rstrip('_') or 'train'} {metric.split('/')[1]}")
        axis.set_ylabel(metric, color=colour)
    accuracy.set_ylim(-0.02, 1.02)
    margins.set_xlabel("step")
    margins.grid(alpha=0.3)
    lines = margins.get_lines() + accuracy.get_lines()
    if lines:
        margins.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="lower right")
    margins.set_title(title)
    return save_figure(figure, path)


def save(run: PreferenceRun) -> None:
    """An atomic checkpoint (LoRA runs: the merged model, with the adapter in the resume state), then
    the plots."""
    config, state, model = run.config, run.state, run.model
    export, extra = checkpoint_model(model)
    train_state = {"step": state.step, "tokens": state.tokens, "train_seconds": run.clock.seconds,
                   "loader": run.batches.state_dict(), "method": config.method, "loss": config.loss,
                   "scores_before": state.scores_before, **extra}
    meta = {"step": state.step, "tokens": state.tokens, "train_seconds": round(run.clock.seconds, 3),
            "val_loss": state.evals[-1]["val_loss"] if state.evals else None, "lmforge_version": lmforge.__version__,
            "preference_config": config.to_dict(), "merged_lora": config.method == "lora"}
    state.checkpoint = save_training_checkpoint(run.out, step=state.step, model=export, wrapped=export,
                                                optimizer=run.optimizer, tokenizer=run.tokenizer, dist=run.dist,
                                                fsdp=False, train_state=train_state, meta=meta, keep=config.keep_checkpoints)
    state.last_save_step = state.step
    if config.plot:
        records = run.metrics.records()
        plot_metrics(records, run.out / "loss.png", title=f"{config.loss} {run.out.name}")
        plot_rewards(records, run.out / "rewards.png", title=f"{config.loss} {run.out.name}")


def resume_run(run: PreferenceRun) -> dict[str, Any]:
    """Phase 4: the adapter (LoRA; base weights come from --model) or the weights (full), the data
    position and counters from the last checkpoint; returns the saved state (optimizer inside)."""
    config = run.config
    checkpoint = find_resume_checkpoint(config.out_dir)
    saved = load_meta(checkpoint).get("preference_config") or {}
    if saved.get("method") != config.method or saved.get("loss") != config.loss:
        raise ValueError(f"{checkpoint} is from a {saved.get('loss', 'non-preference')} ({saved.get('method')}) run; "
                         f"this run is {config.loss} ({config.method})")
    resumed = restore_model(checkpoint, run.model, run.dist)
    run.batches.load_state_dict(resumed["loader"])
    run.state = PreferenceState.resumed(checkpoint, resumed, scores_before=resumed.get("scores_before"))
    run.clock = TrainClock(already=run.state.train_seconds)
    return resumed


def train(run: PreferenceRun, signals: StopSignals) -> None:
    """Phase 5: optimizer steps until the run's length is reached or a signal asks to stop."""
    config, state = run.config, run.state
    throughput = Throughput(run.clock.seconds, state.tokens)
    while run.progress < 1.0:
        loss, grad_norm, stats, _ = train_step(run)
        if state.step % config.log_every == 0 or state.step == 1:
            seconds = run.clock.seconds
            status = (f" | acc {stats['rewards/accuracies']:.2f} | margin {stats['rewards/margins']:.3f}"
                      if "rewards/accuracies" in stats else "")
            log_training_step(run.metrics, run.display, step=state.step, tokens=state.tokens, seconds=seconds,
                              rate=throughput.rate(seconds, state.tokens), progress=run.progress, train_loss=loss,
                              status=status, loss=loss, lr=run.optimizer.param_groups[0]["lr"], grad_norm=grad_norm, **stats,
                              epoch=round(run.batches.epoch_progress, 4))
        with run.clock.paused():
            if config.eval_every and state.step % config.eval_every == 0:
                validate(run)
            if checkpoint_if_due(state, signals, run.dist, config.save_every, lambda: save(run), run.display.message):
                return


def finish(run: PreferenceRun) -> PreferenceResult:
    """Phase 6: last held-out evaluation and task score, final checkpoint, adapter, summary.json."""
    config, state, model = run.config, run.state, run.model
    state.train_seconds = run.clock.seconds
    adapter = merged = None
    if not state.stopped_by:
        if state.last_eval_step != state.step:
            validate(run)
        if run.score is not None:
            state.scores_after = score_run(run, "after")
        if state.last_save_step != state.step:
            save(run)
        if config.method == "lora":
            adapter, merged = save_lora_outputs(model, run.tokenizer, run.out, config.model, config.merge, run.display)
    result = PreferenceResult(run.out, state.checkpoint, adapter, merged, state.step, state.train_seconds,
                              state.scores_before, state.scores_after, state.stopped_by, state.evals)
    if not state.stopped_by:
        last = state.evals[-1] if state.evals else {}
        summary = {"model": config.model, "data": config.data, "loss": config.loss, "beta": config.effective_beta,
                   "method": config.method, "steps": state.step, "tokens": state.tokens,
                   "train_seconds": round(state.train_seconds, 1), "scores_before": state.scores_before,
                   "scores_after": state.scores_after, **{k: v for k, v in last.items() if k.startswith(("val_", "eval_"))},
                   "checkpoint": str(state.checkpoint) if state.checkpoint else None,
                   "adapter": str(adapter) if adapter else None, "merged": str(merged) if merged else None}
        write_text_atomically(run.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------
# The run, top to bottom
# --------------------------------------------------------------------------------------------
def train_preference(config: PreferenceConfig, *, resume: bool = False, show_progress: bool = True,
                     score: TaskScorer | None = None) -> PreferenceResult:
    """Train on preference data as `config` says; with `score`, measure the model before (unless
    eval_before is off) and after training."""
    with single_process(config.device, "preference training") as dist:
        return _train_preference(config, dist, resume, show_progress, score)


def _train_preference(config: PreferenceConfig, dist: DistInfo, resume: bool, show_progress: bool,
                      score: TaskScorer | None) -> PreferenceResult:
    prepare_process(config.threads, config.deterministic, config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ProgressDisplay(enabled=show_progress) as display:
        display.start(f"{config.loss} ({config.method})")
        model, tokenizer = load_model(config.model, dtype=torch.float32, device=dist.device)
        pad_id = _pad_id(tokenizer)
        data = build_data(config, tokenizer, model.config.max_seq_len)
        display.message(data.summary)
        reference = (reference_logps(model, data, config, pad_id, dist.device, display)
                     if config.loss in NEEDS_REFERENCE else None)
        if config.method == "lora":
            apply_lora(model, config.lora.target_spec, rank=config.lora.rank, alpha=config.lora.alpha,
                       dropout=config.lora.dropout)
        trainable, total = count_parameters(model)
        display.message(f"model: {config.model}; {config.loss} (beta {config.effective_beta:g}), method {config.method}: "
                        f"{trainable:,} trainable parameters of {total:,}")
        run = PreferenceRun(config, dist, model, tokenizer, data, ChatBatches(data.train, config.batch_size, pad_id,
                                                                              seed=config.seed),
                            reference, None, autocast(dist.device, config.dtype), None, display,  # type: ignore[arg-type]
                            TrainClock(), PreferenceState(), score, pad_id)
        for split, examples in (("train", data.train), ("val", data.val)):
            run.rows[split] = {e.index: row for row, e in enumerate(examples)}
        run.partners = {"train": {e.index: p for e, p in zip(data.train, data.kl_train)},
                        "val": {e.index: p for e, p in zip(data.val, data.kl_val)}}
        resumed = resume_run(run) if resume else None
        run.optimizer = build_optimizer(model, config.optim)
        if resumed is not None:
            restore_optimizer(run.optimizer, model, resumed["optimizer"])
        model.train()
        run.metrics = MetricsLog(out / "metrics.jsonl", resume_step=run.state.step if resumed else None)
        write_text_atomically(out / "run_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        if score is not None and config.eval_before and run.state.scores_before is None:
            with run.clock.paused():
                run.state.scores_before = score_run(run, "before")
        with StopSignals() as signals:
            train(run, signals)
            return finish(run)
