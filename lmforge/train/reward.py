"""Reward models: a scalar head on a pretrained transformer, trained on preference pairs (Bradley-Terry).

    pretrained model + preference JSONL  ->  reward_model/ (Hugging Face sequence-classification layout:
                                             score.weight, num_labels 1, pad token set), checkpoints,
                                             metrics.jsonl, loss.png, summary.json

The model reads a whole prompt + completion and gives one number, read at the last token that is not
the pad token (`ScalarHeadModel.sequence_scores`, Hugging Face's rule, so
`transformers.AutoModelForSequenceClassification` loads reward_model/ and gives the same scores).
The loss is -log sigmoid(r_chosen - r_rejected) per pair (TRL's RewardTrainer), optionally with
TRL's centring term; the measure is pairwise accuracy on held-out pairs (how often the chosen
completion scores higher). LoRA wraps the backbone's linear layers; the head always trains.
Data, batching, checkpoints and the loop mechanics are the shared ones (`lmforge.train.pairs`,
`.checkpointing`, `.step`, `.metrics`, `.signals`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import lmforge
from lmforge.core.files import write_folder_atomically, write_text_atomically
from lmforge.core.progress import ProgressDisplay
from lmforge.data.chat import ChatBatches
from lmforge.data.preference import read_preference_jsonl
from lmforge.io.checkpoint import load_meta
from lmforge.io.hf import save_sequence_classifier
from lmforge.io.registry import load_model
from lmforge.model.heads import ScalarHeadModel
from lmforge.model.lora import apply_lora, count_parameters, merge_lora
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.checkpointing import (RunState, checkpoint_if_due, checkpoint_model, find_resume_checkpoint,
                                         restore_model, restore_optimizer, save_training_checkpoint)
from lmforge.train.config import OptimConfig
from lmforge.train.distributed import DistInfo, single_process
from lmforge.train.losses.preference import bradley_terry_loss
from lmforge.train.metrics import MetricsLog, Throughput, log_training_step, plot_metrics
from lmforge.train.optim import build_optimizer
from lmforge.train.pairs import EncodedPair, collate_pairs, encode_pairs
from lmforge.train.precision import autocast
from lmforge.train.preference import PairRunConfig
from lmforge.train.reproducibility import prepare_process
from lmforge.train.schedule import fraction_done, lr_multiplier
from lmforge.train.signals import StopSignals, TrainClock
from lmforge.train.step import clip_gradients, ensure_finite

DEFAULT_LR = {"lora": 2e-4, "full": 1e-5}
REWARD_MODEL = "reward_model"


@dataclass(frozen=True)
class RewardConfig(PairRunConfig):
    val_fraction: float = 0.1
    val_max: int = 200
    out_dir: str = "runs/rm"
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=DEFAULT_LR["lora"], weight_decay=0.0))
    center_coefficient: float = 0.0  # TRL's center_rewards_coefficient (0: off)
    head_init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.center_coefficient < 0 or self.head_init_std < 0:
            raise ValueError("center_coefficient and head_init_std must be >= 0")


@dataclass
class RewardResult:
    out_dir: Path
    reward_model: Path | None  # the Hugging Face sequence-classification folder
    checkpoint: Path | None
    steps: int
    train_seconds: float
    accuracy_before: float | None  # held-out pairwise accuracy of the untrained head (chance level)
    accuracy_after: float | None
    stopped_by: str | None
    evals: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RewardRun:
    config: RewardConfig
    dist: DistInfo
    model: ScalarHeadModel
    tokenizer: Tokenizer
    pad_id: int
    train: list[EncodedPair]
    val: list[EncodedPair]
    batches: ChatBatches
    optimizer: Any = None
    metrics: MetricsLog | None = None
    display: ProgressDisplay | None = None
    precision: autocast | None = None
    clock: TrainClock = field(default_factory=TrainClock)
    state: RunState = field(default_factory=RunState)

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def progress(self) -> float:
        config = self.config
        return fraction_done((self.state.step, config.max_steps), (self.batches.epoch_progress, config.epochs),
                             (self.clock.seconds, config.time_budget_s))

    def scores(self, pairs: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen scores [B], rejected scores [B]) of a micro-batch, one forward for both."""
        batch = collate_pairs(pairs, self.pad_id).to(self.dist.device)
        with self.precision:
            scores = self.model.sequence_scores(batch.ids, self.pad_id)
        return scores[:len(pairs)], scores[len(pairs):]


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------
def build_data(config: RewardConfig, tokenizer: Tokenizer, max_seq_len: int) -> tuple[list[EncodedPair], list[EncodedPair], str]:
    """Read, check, hold out and tokenize the pairs; returns (train, held out, a log line)."""
    if config.data is None:
        raise ValueError("no preference data: give a JSONL file (or let the CLI generate verifiable pairs)")
    data = read_preference_jsonl(config.data)
    if not data.pairs:
        raise ValueError(f"{config.data}: a reward model trains on pairs (chosen and rejected), this file is unpaired")
    train, val = (data, read_preference_jsonl(config.val_data)) if config.val_data else \
        data.hold_out(config.val_fraction, config.val_max, config.seed)
    max_length = min(config.max_length, max_seq_len)
    train_set, skipped = encode_pairs(tokenizer, train.pairs, max_length)
    val_set, _ = encode_pairs(tokenizer, val.pairs, max_length)
    if not train_set:
        raise ValueError(f"{config.data}: no usable training pairs (skipped: {dict(skipped)})")
    dropped = dict(data.skipped) | dict(skipped)
    line = (f"data: {len(train_set)} training pairs, {len(val_set)} held out, from {config.data}"
            + (f"; skipped or cut: {', '.join(f'{n} {why}' for why, n in sorted(dropped.items()))}" if dropped else ""))
    return train_set, val_set, line


def train_step(run: RewardRun) -> tuple[float, float, float, float]:
    """One optimizer step: (mean loss, gradient norm, pairwise accuracy, mean margin) of its pairs."""
    config, state = run.config, run.state
    run.optimizer.set_lr_multiplier(lr_multiplier(config.schedule, state.step, run.progress))
    micro = [run.batches.next_rows() for _ in range(config.grad_accum)]
    total = sum(len(m) for m in micro)
    loss_sum, right, margin = 0.0, 0.0, 0.0
    for pairs in micro:
        chosen, rejected = run.scores(pairs)
        losses = bradley_terry_loss(chosen, rejected, center_coefficient=config.center_coefficient)
        (losses.sum() / total).backward()
        loss_sum += float(losses.detach().sum())
        right += float((chosen > rejected).sum())
        margin += float((chosen - rejected).detach().sum())
        state.tokens += sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)
    loss = loss_sum / total
    ensure_finite(loss, state.step + 1, run.dist)
    grad_norm = clip_gradients(run.model, config.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad()
    state.step += 1
    return loss, grad_norm, right / total, margin / total


@torch.no_grad()
def validate(run: RewardRun) -> dict[str, Any] | None:
    """Held-out loss, pairwise accuracy (ties count half) and mean margin, logged and kept."""
    if not run.val:
        return None
    started = time.perf_counter()
    was_training = run.model.training
    run.model.eval()
    chosen, rejected = [], []
    for start in range(0, len(run.val), run.config.eval_batch_size):
        c, r = run.scores(run.val[start:start + run.config.eval_batch_size])
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    run.model.train(was_training)
    chosen_t, rejected_t = torch.cat(chosen), torch.cat(rejected)
    wins = (chosen_t > rejected_t).float() + 0.5 * (chosen_t == rejected_t).float()
    state = run.state
    record = {"step": state.step, "tokens": state.tokens, "time_s": round(run.clock.seconds, 3),
              "val_loss": float(bradley_terry_loss(chosen_t, rejected_t).mean()), "eval_accuracy": float(wins.mean()),
              "eval_accuracy_stderr": float(wins.std() / len(wins) ** 0.5) if len(wins) > 1 else float("nan"),
              "eval_margin": float((chosen_t - rejected_t).mean()), "eval_pairs": len(wins),
              "eval_s": round(time.perf_counter() - started, 3)}
    run.metrics.log(**record)
    state.evals.append(record)
    state.last_eval_step = state.step
    run.display.message(f"step {state.step}: held-out pairwise accuracy {record['eval_accuracy']:.1%} "
                        f"(± {record['eval_accuracy_stderr']:.1%}) on {len(wins)} pairs, loss {record['val_loss']:.4f}")
    return record


def save(run: RewardRun) -> None:
    """An atomic resume checkpoint: the backbone (merged under LoRA), the head and the adapter in
    the resume state; then the loss plot."""
    config, state = run.config, run.state
    export, extra = checkpoint_model(run.model.base)
    train_state = {"step": state.step, "tokens": state.tokens, "train_seconds": run.clock.seconds,
                   "loader": run.batches.state_dict(), "score": run.model.score.weight.detach().cpu().clone(), **extra}
    meta = {"step": state.step, "tokens": state.tokens, "train_seconds": round(run.clock.seconds, 3),
            "eval_accuracy": state.evals[-1]["eval_accuracy"] if state.evals else None,
            "lmforge_version": lmforge.__version__, "reward_config": config.to_dict()}
    state.checkpoint = save_training_checkpoint(run.out, step=state.step, model=export, wrapped=export,
                                                optimizer=run.optimizer, tokenizer=run.tokenizer, dist=run.dist,
                                                fsdp=False, train_state=train_state, meta=meta, keep=config.keep_checkpoints)
    state.last_save_step = state.step
    if config.plot:
        plot_metrics(run.metrics.records(), run.out / "loss.png", title=f"reward model {run.out.name}")


def resume_run(run: RewardRun) -> dict[str, Any]:
    checkpoint = find_resume_checkpoint(run.config.out_dir)
    saved = load_meta(checkpoint).get("reward_config") or {}
    if saved.get("method") != run.config.method:
        raise ValueError(f"{checkpoint} is not from a {run.config.method} reward-model run")
    resumed = restore_model(checkpoint, run.model.base, run.dist)
    with torch.no_grad():
        run.model.score.weight.copy_(resumed["score"])
    run.batches.load_state_dict(resumed["loader"])
    run.state = RunState.resumed(checkpoint, resumed)
    run.clock = TrainClock(already=run.state.train_seconds)
    return resumed


def train(run: RewardRun, signals: StopSignals) -> None:
    config, state = run.config, run.state
    throughput = Throughput(run.clock.seconds, state.tokens)
    while run.progress < 1.0:
        loss, grad_norm, accuracy, margin = train_step(run)
        if state.step % config.log_every == 0 or state.step == 1:
            seconds = run.clock.seconds
            log_training_step(run.metrics, run.display, step=state.step, tokens=state.tokens, seconds=seconds,
                              rate=throughput.rate(seconds, state.tokens), progress=run.progress, train_loss=loss,
                              status=f" | acc {accuracy:.2f}", loss=loss, accuracy=accuracy, margin=margin,
                              lr=run.optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                              epoch=round(run.batches.epoch_progress, 4))
        with run.clock.paused():
            if config.eval_every and state.step % config.eval_every == 0:
                validate(run)
            if checkpoint_if_due(state, signals, run.dist, config.save_every, lambda: save(run), run.display.message):
                return


def finish(run: RewardRun, accuracy_before: float | None) -> RewardResult:
    """The last held-out evaluation and checkpoint, then the reward model in Hugging Face's
    sequence-classification layout (LoRA merged in), and summary.json."""
    config, state = run.config, run.state
    state.train_seconds = run.clock.seconds
    folder = None
    if not state.stopped_by:
        if state.last_eval_step != state.step:
            validate(run)
        if state.last_save_step != state.step:
            save(run)
        if config.method == "lora":
            merge_lora(run.model.base)
        folder = write_folder_atomically(run.out / REWARD_MODEL,
                                         lambda tmp: save_sequence_classifier(run.model, run.tokenizer, tmp, run.pad_id))
        run.display.message(f"reward model (sequence-classification layout, pad id {run.pad_id}): {folder}")
    after = state.evals[-1]["eval_accuracy"] if state.evals else None
    result = RewardResult(run.out, folder, state.checkpoint, state.step, state.train_seconds, accuracy_before, after,
                          state.stopped_by, state.evals)
    if not state.stopped_by:
        last = state.evals[-1] if state.evals else {}
        summary = {"model": config.model, "data": config.data, "method": config.method, "steps": state.step,
                   "tokens": state.tokens, "train_seconds": round(state.train_seconds, 1),
                   "eval_accuracy_before": accuracy_before, **{k: v for k, v in last.items() if k.startswith("eval_")},
                   "reward_model": str(folder), "checkpoint": str(state.checkpoint) if state.checkpoint else None}
        write_text_atomically(run.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def train_reward_model(config: RewardConfig, *, resume: bool = False, show_progress: bool = True) -> RewardResult:
    with single_process(config.device, "reward-model training") as dist:
        return _train_reward_model(config, dist, resume, show_progress)


def _train_reward_model(config: RewardConfig, dist: DistInfo, resume: bool, show_progress: bool) -> RewardResult:
    prepare_process(config.threads, config.deterministic, config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ProgressDisplay(enabled=show_progress) as display:
        display.start(f"reward model ({config.method})")
        base, tokenizer = load_model(config.model, dtype=torch.float32, device=dist.device)
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        if pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; a reward model needs one to pad with")
        train_set, val_set, line = build_data(config, tokenizer, base.config.max_seq_len)
        display.message(line)
        model = ScalarHeadModel(base, init_std=config.head_init_std)
        if config.method == "lora":
            apply_lora(base, config.lora.target_spec, rank=config.lora.rank, alpha=config.lora.alpha,
                       dropout=config.lora.dropout)
        trainable, total = count_parameters(model)
        display.message(f"model: {config.model} + score head; method {config.method}: {trainable:,} trainable "
                        f"parameters of {total:,}")
        run = RewardRun(config, dist, model, tokenizer, pad_id, train_set, val_set,
                        ChatBatches(train_set, config.batch_size, pad_id, seed=config.seed), display=display,
                        precision=autocast(dist.device, config.dtype))
        resumed = resume_run(run) if resume else None
        run.optimizer = build_optimizer(model, config.optim)
        if resumed is not None:
            restore_optimizer(run.optimizer, model, resumed["optimizer"])
        run.metrics = MetricsLog(out / "metrics.jsonl", resume_step=run.state.step if resumed else None)
        write_text_atomically(out / "run_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        model.train()
        before = None
        if not resume:
            with run.clock.paused():
                record = validate(run)
            before = record["eval_accuracy"] if record else None
        with StopSignals() as signals:
            train(run, signals)
            return finish(run, before)
